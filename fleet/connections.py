"""Redis connections for clients and workers, configured once from :class:`Settings`.

Clients fail fast (an API must answer 503 within seconds when Redis is down); workers are
patient (a Redis restart must not kill a worker fleet): same URL, two retry policies.
A ``redis+sentinel://`` URL names sentinels instead of a server: every connection asks them
for the current primary, so clients and workers follow a failover by themselves.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any
from urllib.parse import parse_qs, urlparse

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.jobs import Deserializer, Serializer
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, RedisError, TimeoutError

from fleet import serializer
from fleet.settings import SENTINEL_SCHEME, Settings, parse_sentinel_url, split_credentials

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
_TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")


def redis_settings(settings: Settings) -> RedisSettings:
    """arq's connection settings for a client.

    ``rediss://`` means TLS, the certificate verified and its name checked against the host;
    ``?ssl_ca_certs=/path`` (and ``ssl_certfile``, ``ssl_keyfile``,
    ``ssl_cert_reqs``) configure it; ``user:password@`` is honoured, the password raw or
    percent-encoded (see :func:`fleet.settings.split_credentials`)."""
    url, username, password = split_credentials(settings.redis_url or DEFAULT_REDIS_URL)
    if url.startswith(f"{SENTINEL_SCHEME}:"):
        rs = _sentinel_settings(url)
    else:
        rs = RedisSettings.from_dsn(url)
        query = parse_qs(urlparse(url).query)
        for option in _TLS_OPTIONS:
            if option in query:
                setattr(rs, option, query[option][0])
        # arq leaves hostname checking off: a certificate for another name would be accepted.
        rs.ssl_check_hostname = rs.ssl and rs.ssl_cert_reqs in ("required", ssl.CERT_REQUIRED)
    rs.username, rs.password = username, password
    rs.conn_timeout = 2
    rs.conn_retries = 2
    rs.conn_retry_delay = 1
    return rs


def _sentinel_settings(url: str) -> RedisSettings:
    """arq's settings for a primary found through sentinels (arq asks them on each connect);
    the URL's credentials are the primary's, the sentinels themselves take none."""
    found = parse_sentinel_url(url)
    return RedisSettings(
        host=list(found.sentinels), database=found.database, sentinel=True, sentinel_master=found.master
    )


def worker_redis_settings(settings: Settings) -> RedisSettings:
    """A worker's: every command retried with backoff for about a minute, so workers ride
    out a Redis restart or failover and carry on where they were."""
    rs = redis_settings(settings)
    rs.conn_retries = 30
    if rs.sentinel:
        # redis-py nests this retry three deep behind Sentinel (the command; asking the sentinels
        # and connecting; connecting to the address they gave), so it is kept short: 20 tries
        # would retry the dead primary's address for a minute before asking again. Four give
        # a fresh answer every ~4 s (the promoted replica soon after a failover) and about
        # 90 s in all without one.
        rs.retry = Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=4)
    else:
        rs.retry = Retry(ExponentialBackoff(cap=4.0, base=0.1), retries=20)
    rs.retry_on_error = [ConnectionError, TimeoutError, ConnectionRefusedError, OSError]
    return rs


def lazy_pool(settings: Settings) -> ArqRedis:
    """A client's pool that connects on first use, not now: an API process starts while
    Redis is down, and each enqueue fails (EnqueueError, 503) until Redis is back."""
    rs = redis_settings(settings)
    pool = _sentinel_pool(rs, socket_timeout=5) if rs.sentinel else _lazy_direct_pool(rs)
    pool.job_serializer = serializer.serialize
    pool.job_deserializer = serializer.deserialize
    return pool


def _sentinel_pool(rs: RedisSettings, socket_timeout: float | None) -> ArqRedis:
    """The primary's pool, asking the sentinels for its address on each new connection (so a
    failover is followed), and only then: creating it contacts no one. It keeps ``rs``'s
    retry policy, which arq's own sentinel pool drops: a worker's command cut off by a
    failover is sent again, on a new connection to the promoted replica."""
    assert isinstance(rs.host, list)
    sentinels = Sentinel(rs.host, socket_connect_timeout=rs.conn_timeout, socket_timeout=socket_timeout)  # type: ignore[no-untyped-call]
    pool = sentinels.master_for(
        rs.sentinel_master,
        redis_class=ArqRedis,
        **_database_and_credentials(rs),
        retry=rs.retry,
        retry_on_error=rs.retry_on_error,
        retry_on_timeout=rs.retry_on_timeout,
        max_connections=rs.max_connections,
    )
    assert isinstance(pool, ArqRedis)
    return pool


_TLS = (
    "ssl",
    "ssl_keyfile",
    "ssl_certfile",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_ca_data",
    "ssl_check_hostname",
)
"""RedisSettings' TLS fields, passed to redis-py under the same names."""


def _lazy_direct_pool(rs: RedisSettings) -> ArqRedis:
    assert isinstance(rs.host, str)
    return ArqRedis(
        host=rs.host,
        port=rs.port,
        unix_socket_path=rs.unix_socket_path,
        socket_connect_timeout=rs.conn_timeout,
        socket_timeout=5,
        **_database_and_credentials(rs),
        **{name: getattr(rs, name) for name in _TLS},
    )


def _database_and_credentials(rs: RedisSettings) -> dict[str, Any]:
    """What every pool of ours passes redis-py, whichever way it finds the server."""
    return {"db": rs.database, "username": rs.username, "password": rs.password, "encoding": "utf8"}


async def open_pool(settings: Settings) -> ArqRedis:
    """A client's pool, connected now."""
    return await connect(redis_settings(settings))


async def connect(
    rs: RedisSettings,
    *,
    job_serializer: Serializer | None = serializer.serialize,
    job_deserializer: Deserializer | None = serializer.deserialize,
    **arq_options: Any,
) -> ArqRedis:
    """arq's ``create_pool`` (connected, tried ``conn_retries`` times), except behind Sentinel,
    where arq passes its pool only the database and credentials: here the pool keeps the retry
    policy (a worker's, see :func:`worker_redis_settings`) and the connect timeout."""
    if not rs.sentinel:
        return await create_pool(
            rs, job_serializer=job_serializer, job_deserializer=job_deserializer, **arq_options
        )
    pool = _sentinel_pool(rs, socket_timeout=None)  # as arq's: a BLPOP waits as long as it asks
    pool.job_serializer, pool.job_deserializer = job_serializer, job_deserializer
    for name, value in arq_options.items():  # default_queue_name, expires_extra_ms
        setattr(pool, name, value)
    tries_left = rs.conn_retries
    while True:
        try:
            await pool.ping()
            return pool
        except (RedisError, OSError):  # OSError: TimeoutError too
            if tries_left <= 0:
                await pool.aclose()
                raise
            tries_left -= 1
            await asyncio.sleep(rs.conn_retry_delay)
