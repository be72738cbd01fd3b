"""Fixtures on real services: Redis (the machine's via TEST_REDIS_URL, else a private
redis-server), MariaDB (TEST_MYSQL_URL) and PostgreSQL (TEST_POSTGRES_URL) holding the
board's real tables, real pyvips, real processes.

Every test gets its own key namespace and storage root, so tests never see each other's
queues or files, and a shared Redis is never flushed. A service that cannot be reached skips
its tests with the reason, unless FLEET_REQUIRE_SERVICES=1 (CI), where that is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
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

REQUIRE_SERVICES = os.environ.get("FLEET_REQUIRE_SERVICES") == "1"


def unavailable(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (FLEET_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


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


@contextlib.asynccontextmanager
async def running_worker(*worker_kwargs: dict[str, Any] | list[dict[str, Any]]) -> AsyncIterator[Any]:
    """arq workers in this event loop (renders still run in the img worker's process pool).

    Takes worker settings as the factories return them (a dict, or a list for a worker kind
    serving several queues); yields the worker, or a list of them when there are several."""
    from fleet.worker import make_worker

    flat = [k for kwargs in worker_kwargs for k in (kwargs if isinstance(kwargs, list) else [kwargs])]
    workers = [make_worker(kwargs, handle_signals=False) for kwargs in flat]
    tasks = [asyncio.create_task(w.async_run()) for w in workers]
    try:
        yield workers[0] if len(workers) == 1 else workers
    finally:
        from fleet.worker import close_worker

        for worker, task in zip(workers, tasks, strict=True):
            await close_worker(worker)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


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


BOARD_SCHEMAS = {
    "mariadb-seed": ("mysql_url", ("mariadb_seed.sql",)),
    "mariadb": ("mysql_url", ("mariadb_seed.sql", "mariadb_migrations.sql")),
    "postgres": ("postgres_url", ("postgres_head.sql",)),
}
"""The board's real tables (tests/board_schema/, written from docs/board.md), each kind's DDL
files run in order: the seed-era board on MariaDB; today's on MariaDB, as the board's
migrations took the seed-era tables there; today's on PostgreSQL (a frozen baseline)."""


@contextlib.asynccontextmanager
async def board_database(request: pytest.FixtureRequest, kind: str) -> AsyncIterator[str]:
    """A fresh database holding the board's tables of ``kind``, dropped afterwards."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    server_fixture, ddl_files = BOARD_SCHEMAS[kind]
    server_url: str = request.getfixturevalue(server_fixture)
    name = f"fleet_test_{uuid.uuid4().hex[:12]}"
    quote = "`" if server_fixture == "mysql_url" else '"'
    server = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    async with server.connect() as conn:
        await conn.execute(text(f"CREATE DATABASE {quote}{name}{quote}"))
    url = f"{server_url.rstrip('/')}/{name}"
    engine = create_async_engine(url)
    try:
        statements = "\n".join(
            line for ddl in ddl_files
            for line in (Path(__file__).parent / "board_schema" / ddl).read_text().splitlines()
            if not line.startswith("--")
        ).split(";")  # fmt: skip
        async with engine.begin() as conn:
            if server_fixture == "mysql_url":
                mode = (await conn.execute(text("SELECT @@SESSION.sql_mode"))).scalar_one()
                assert "STRICT_TRANS_TABLES" in mode, f"MariaDB is not in strict mode: {mode}"
            for statement in statements:
                if statement.strip():
                    await conn.execute(text(statement))
            await conn.execute(
                text("INSERT INTO users (user_id, username) VALUES (:id, :name)"),
                [{"id": i, "name": f"user{i}"} for i in range(1, 1101)],
            )
        await engine.dispose()
        yield url
    finally:
        await engine.dispose()
        async with server.connect() as conn:
            await conn.execute(text(f"DROP DATABASE IF EXISTS {quote}{name}{quote}"))
        await server.dispose()


@pytest.fixture(params=["sqlite", *BOARD_SCHEMAS])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh board database: the board's own tables (seed-era MariaDB, today's MariaDB and
    PostgreSQL), and fleet's demo copy on SQLite."""
    if request.param == "sqlite":
        from fleet.db import create_engine, create_schema

        url = f"sqlite+aiosqlite:///{tmp_path / 'board.sqlite3'}"
        engine = create_engine(Settings(database_url=url))
        await create_schema(engine)
        await engine.dispose()
        yield url
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
