"""Redis connections for clients and workers, configured once from :class:`Settings`."""

from __future__ import annotations

from arq.connections import ArqRedis, RedisSettings, create_pool

from fleet import serializer
from fleet.settings import Settings

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_settings(settings: Settings) -> RedisSettings:
    """arq's connection settings; ``rediss://`` means TLS and ``user:password@`` is honoured."""
    rs = RedisSettings.from_dsn(settings.redis_url or DEFAULT_REDIS_URL)
    # Fail fast: a caller enqueueing an upload must learn within seconds that Redis is down.
    rs.conn_timeout = 2
    rs.conn_retries = 2
    rs.conn_retry_delay = 1
    return rs


async def open_pool(settings: Settings) -> ArqRedis:
    return await create_pool(
        redis_settings(settings),
        job_serializer=serializer.serialize,
        job_deserializer=serializer.deserialize,
    )
