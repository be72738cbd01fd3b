"""Fixtures on real services: Redis (the machine's via TEST_REDIS_URL, else a private
redis-server), MariaDB (TEST_MYSQL_URL), real pyvips, real processes.

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


@pytest.fixture
def mysql_url() -> str:
    """A MariaDB server URL (no database); tests create and drop their own database."""
    url = os.environ.get("TEST_MYSQL_URL", "mysql+aiomysql://root@127.0.0.1:3306/")
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(url)
    try:
        socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 3306), timeout=2).close()
    except OSError as exc:
        unavailable(f"MariaDB at {parsed.hostname}:{parsed.port} unreachable: {exc}")
    return url


@pytest.fixture(params=["sqlite", "mariadb"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty board database with fleet's tables: SQLite, and MariaDB per run."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from fleet.db import create_engine, create_schema

    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'board.sqlite3'}"
        server = None
    else:
        server_url = request.getfixturevalue("mysql_url")
        name = f"fleet_test_{uuid.uuid4().hex[:12]}"
        server = create_async_engine(server_url)
        async with server.begin() as conn:
            await conn.execute(text(f"CREATE DATABASE `{name}`"))
        url = f"{server_url.rstrip('/')}/{name}"
    engine = create_engine(Settings(database_url=url))
    await create_schema(engine)
    await engine.dispose()
    yield url
    if server is not None:
        async with server.begin() as conn:
            await conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        await server.dispose()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Any]:
    from fleet.db import create_engine

    engine = create_engine(Settings(database_url=database_url))
    yield engine
    await engine.dispose()
