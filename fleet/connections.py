"""Redis connections for clients and workers, configured once from :class:`Settings`.

Clients fail fast (an API must answer 503 within seconds when Redis is down); workers are
patient (a Redis restart must not kill a worker fleet): same URL, two retry policies.
"""

from __future__ import annotations

import ssl
from urllib.parse import parse_qs, urlparse

from arq.connections import ArqRedis, RedisSettings, create_pool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError

from fleet import serializer
from fleet.settings import Settings, split_credentials

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
_TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")


def redis_settings(settings: Settings) -> RedisSettings:
    """arq's connection settings for a client.

    ``rediss://`` means TLS, the certificate verified and its name checked against the host;
    ``?ssl_ca_certs=/path`` (and ``ssl_certfile``, ``ssl_keyfile``,
    ``ssl_cert_reqs``) configure it; ``user:password@`` is honoured, the password raw or
    percent-encoded (see :func:`fleet.settings.split_credentials`)."""
    url, username, password = split_credentials(settings.redis_url or DEFAULT_REDIS_URL)
    rs = RedisSettings.from_dsn(url)
    rs.username, rs.password = username, password
    query = parse_qs(urlparse(url).query)
    for option in _TLS_OPTIONS:
        if option in query:
            setattr(rs, option, query[option][0])
    # arq leaves hostname checking off: a certificate for another name would be accepted.
    rs.ssl_check_hostname = rs.ssl and rs.ssl_cert_reqs in ("required", ssl.CERT_REQUIRED)
    rs.conn_timeout = 2
    rs.conn_retries = 2
    rs.conn_retry_delay = 1
    return rs


def worker_redis_settings(settings: Settings) -> RedisSettings:
    """A worker's: every command retried with backoff for about a minute, so workers ride
    out a Redis restart or failover and carry on where they were."""
    rs = redis_settings(settings)
    rs.conn_retries = 30
    rs.retry = Retry(ExponentialBackoff(cap=4.0, base=0.1), retries=20)
    rs.retry_on_error = [ConnectionError, TimeoutError, ConnectionRefusedError, OSError]
    return rs


def lazy_pool(settings: Settings) -> ArqRedis:
    """A client's pool that connects on first use, not now: an API process starts while
    Redis is down, and each enqueue fails (EnqueueError, 503) until Redis is back."""
    rs = redis_settings(settings)
    pool = ArqRedis(
        host=rs.host,
        port=rs.port,
        unix_socket_path=rs.unix_socket_path,
        db=rs.database,
        username=rs.username,
        password=rs.password,
        socket_connect_timeout=rs.conn_timeout,
        socket_timeout=5,
        ssl=rs.ssl,
        ssl_keyfile=rs.ssl_keyfile,
        ssl_certfile=rs.ssl_certfile,
        ssl_cert_reqs=rs.ssl_cert_reqs,
        ssl_ca_certs=rs.ssl_ca_certs,
        ssl_ca_data=rs.ssl_ca_data,
        ssl_check_hostname=rs.ssl_check_hostname,
        encoding="utf8",
    )
    pool.job_serializer = serializer.serialize
    pool.job_deserializer = serializer.deserialize
    return pool


async def open_pool(settings: Settings) -> ArqRedis:
    return await create_pool(
        redis_settings(settings),
        job_serializer=serializer.serialize,
        job_deserializer=serializer.deserialize,
    )
