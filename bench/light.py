"""Throughput of the light queues: rating recalculations/s (MariaDB, SQLite) and IQDB
index jobs/s against the in-test IQDB server. Real Redis, real databases, one worker each.

    uv run python -m bench.light [--jobs N]

Jobs are queued first, then one worker drains them; the time is from the worker's start to
the last job's end, so it measures the worker, not the enqueue.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from bench.iqdb_server import IqdbServer
from fleet import db
from fleet.board import Folder
from fleet.client import FleetClient
from fleet.services import EmbeddedRedis
from fleet.settings import Settings
from fleet.worker import close_worker, make_worker
from ratingworker.worker import db_worker_settings, iqdb_worker_settings

MYSQL_URL = os.environ.get("TEST_MYSQL_URL", "mysql+aiomysql://root@127.0.0.1:3306/")


@asynccontextmanager
async def board(kind: str, tmp: Path) -> AsyncIterator[str]:
    tmp.mkdir(parents=True, exist_ok=True)
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp / 'bench.sqlite3'}"
        server = None
    else:
        name = f"fleet_bench_{uuid.uuid4().hex[:8]}"
        server = create_async_engine(MYSQL_URL)
        async with server.begin() as conn:
            await conn.execute(sa.text(f"CREATE DATABASE `{name}`"))
        url = f"{MYSQL_URL.rstrip('/')}/{name}"
    engine = db.create_engine(Settings(database_url=url))
    await db.create_schema(engine)
    await engine.dispose()
    try:
        yield url
    finally:
        if server is not None:
            async with server.begin() as conn:
                await conn.execute(sa.text(f"DROP DATABASE `{name}`"))
            await server.dispose()


async def drain(kwargs: dict[str, Any], jobs: list[Any]) -> float:
    worker = make_worker(kwargs, handle_signals=False)
    started = time.perf_counter()
    task = asyncio.create_task(worker.async_run())
    for job in jobs:
        await job.result(timeout=300, poll_delay=0.01)
    seconds = time.perf_counter() - started
    await close_worker(worker)
    task.cancel()
    return seconds


async def ratings(settings: Settings, kind: str, n: int, tmp: Path) -> dict[str, Any]:
    async with board(kind, tmp) as url:
        settings = settings.replace(database_url=url, namespace=f"bench-{uuid.uuid4().hex[:8]}")
        engine = db.create_engine(settings)
        async with engine.begin() as conn:
            await conn.execute(
                sa.insert(db.images),
                [{"image_id": i, "filename": f"x-{i}", "ext": "jpg"} for i in range(1, n + 1)],
            )
            await conn.execute(
                sa.insert(db.image_ratings),
                [
                    {"user_id": u, "image_id": i, "rating": (i + u) % 10 + 1}
                    for i in range(1, n + 1)
                    for u in range(3)
                ],
            )
        await engine.dispose()
        async with await FleetClient.connect(settings) as client:
            jobs = [await client.recalculate_rating(i) for i in range(1, n + 1)]
            seconds = await drain(db_worker_settings(settings), jobs)
    return {
        "queue": "db",
        "job": "recalculate_rating",
        "database": kind,
        "jobs": n,
        "seconds": round(seconds, 3),
        "jobs_per_s": round(n / seconds, 1),
    }


async def iqdb(settings: Settings, n: int, tmp: Path) -> dict[str, Any]:
    import pyvips

    root = tmp / "storage"
    (root / Folder.IQDB).mkdir(parents=True)
    thumb = pyvips.Image.perlin(500, 400, cell_size=64).linear(100, 128).cast("uchar").jpegsave_buffer(Q=90)
    for i in range(1, n + 1):
        (root / Folder.IQDB / f"x-{i}.jpg").write_bytes(thumb)
    with IqdbServer() as server:
        async with board("sqlite", tmp) as url:
            settings = settings.replace(
                database_url=url,
                iqdb_url=server.url,
                storage_path=root,
                namespace=f"bench-{uuid.uuid4().hex[:8]}",
            )
            engine = db.create_engine(settings)
            async with engine.begin() as conn:
                await conn.execute(
                    sa.insert(db.images),
                    [{"image_id": i, "filename": f"x-{i}", "ext": "jpg"} for i in range(1, n + 1)],
                )
            await engine.dispose()
            async with await FleetClient.connect(settings) as client:
                jobs = [await client.index_iqdb(i, f"{Folder.IQDB}/x-{i}.jpg") for i in range(1, n + 1)]
                seconds = await drain(iqdb_worker_settings(settings), jobs)
            assert len(server.state.images) == n
        return {
            "queue": "iqdb",
            "job": "index_iqdb",
            "jobs": n,
            "seconds": round(seconds, 3),
            "jobs_per_s": round(n / seconds, 1),
        }


def _mariadb_reachable() -> bool:
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(MYSQL_URL.replace("+aiomysql", ""))
    try:
        socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 3306), timeout=2).close()
    except OSError:
        return False
    return True


async def main(n: int) -> list[dict[str, Any]]:
    with EmbeddedRedis() as redis, tempfile.TemporaryDirectory() as tmp:
        settings = Settings(redis_url=redis.url, log_level="WARNING", metrics_port=0)  # a shared host
        results = []
        kinds = ("mariadb", "sqlite") if _mariadb_reachable() else ("sqlite",)
        for kind in kinds:
            results.append(await ratings(settings, kind, n, Path(tmp) / kind))
        results.append(await iqdb(settings, n, Path(tmp) / "iqdb"))
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    for line in asyncio.run(main(parser.parse_args().jobs)):
        print(json.dumps(line))
