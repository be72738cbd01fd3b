"""Fixtures on real services: Redis (the machine's via TEST_REDIS_URL, else a private
redis-server), MariaDB (TEST_MYSQL_URL) and PostgreSQL (TEST_POSTGRES_URL) holding the
board's real tables, real pyvips, real processes.

Every test gets its own key namespace and storage root, so tests never see each other's
queues or files, and a shared Redis is never flushed. A service that cannot be reached skips
its tests with the reason, unless FLEET_REQUIRE_SERVICES=1 (CI), where that is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from fleet.client import FleetClient
from fleet.services import EmbeddedRedis
from fleet.settings import Settings
from tests.support import BOARD_SCHEMAS, board_database, sqlite_board, unavailable


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("TEST_REDIS_URL") or os.environ.get("REDIS_URL")
    if url:
        try:
            redis.Redis.from_url(url, socket_connect_timeout=2).ping()
        except redis.RedisError as exc:
            unavailable(f"Redis at {url} unreachable: {exc}")
        yield url
        return
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    ns = f"test-{uuid.uuid4().hex[:12]}"
    yield ns
    r = redis.Redis.from_url(redis_url)
    keys = list(r.scan_iter(f"{ns}:*", count=1000))
    if keys:
        r.delete(*keys)


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    root = tmp_path / "storage"
    (root / "fullsize").mkdir(parents=True)
    return root


@pytest.fixture
def settings(redis_url: str, namespace: str, storage: Path, tmp_path: Path) -> Settings:
    return Settings(
        redis_url=redis_url,
        storage_path=storage,
        namespace=namespace,
        runtime_dir=tmp_path / "run",  # worker processes of one test register here, not in /tmp
        img_pool_size=2,
        poll_delay_s=0.02,
        retry_base_s=0.05,
        retry_cap_s=0.2,
        metrics_port=0,
    )


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[FleetClient]:
    async with await FleetClient.connect(settings) as c:
        yield c


@pytest.fixture
async def bulk_settings(settings: Settings, tmp_path: Path) -> Settings:
    """Settings for bulk runs: a SQLite board (its tables made, no rows), small batches."""
    return settings.replace(
        database_url=await sqlite_board(tmp_path),
        bulk_max_queued=400,
        bulk_batch_size=16,
        bulk_max_jobs=2,
    )


def _reachable(url: str, default_port: int, what: str) -> str:
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(url)
    try:
        socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or default_port), timeout=2
        ).close()
    except OSError as exc:
        unavailable(f"{what} at {parsed.hostname}:{parsed.port or default_port} unreachable: {exc}")
    return url


@pytest.fixture
def mysql_url() -> str:
    """A MariaDB server URL (no database); tests create and drop their own database."""
    return _reachable(
        os.environ.get("TEST_MYSQL_URL", "mysql+aiomysql://root@127.0.0.1:3306/"), 3306, "MariaDB"
    )


@pytest.fixture
def postgres_url() -> str:
    """A PostgreSQL server URL (no database); tests create and drop their own database."""
    url = os.environ.get("TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/")
    return _reachable(url, 5432, "PostgreSQL")


@pytest.fixture(params=["sqlite", *BOARD_SCHEMAS])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh board database: the board's own tables (seed-era MariaDB, today's MariaDB and
    PostgreSQL), and fleet's demo copy on SQLite."""
    if request.param == "sqlite":
        yield await sqlite_board(tmp_path)
        return
    async with board_database(request, request.param) as url:
        yield url


@pytest.fixture(params=list(BOARD_SCHEMAS))
async def server_database_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """The board's own tables on a database server (no SQLite)."""
    async with board_database(request, request.param) as url:
        yield url


@pytest.fixture(params=["mariadb", "postgres"])
async def today_database_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """Today's board (2026-08 schema) on MariaDB and PostgreSQL."""
    async with board_database(request, request.param) as url:
        yield url


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Any]:
    from fleet.db import create_engine

    engine = create_engine(Settings(database_url=database_url))
    yield engine
    await engine.dispose()
