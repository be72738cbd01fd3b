"""Bulk re-rendering (``fleet rethumb``) on real Redis, real files, real processes."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from fleet import db
from fleet.bulk import BulkRun, Selection, rethumb
from fleet.client import FleetClient
from fleet.keys import queue_key
from fleet.registry import Queue
from fleet.render_settings import RenderSettings
from fleet.services import EmbeddedRedis
from fleet.settings import Settings
from imgworker.backend import Priority, ProcessPoolBackend
from imgworker.render import RenderRequest, options_of
from imgworker.worker import worker_settings
from tests import images
from tests.board import PENDING_VARIANTS
from tests.conftest import running_worker
from tests.iqdb_server import IqdbServer


async def board(settings: Settings, count: int, distinct: int = 12) -> AsyncEngine:
    """``count`` rows and originals (hard links to a few small distinct files)."""
    full = settings.storage_path / "fullsize"
    sources = [
        images.jpeg(settings.storage_path, f"src-{k}.jpg", 160 + 23 * k, 120 + 17 * k)
        for k in range(distinct)
    ]
    rows = []
    for image_id in range(1, count + 1):
        name = f"2025-{1 + image_id % 12:02d}-{1 + image_id % 28:02d}-{image_id}"
        os.link(full / f"{sources[image_id % distinct][0]}.jpg", full / f"{name}.jpg")
        rows.append({"image_id": image_id, "filename": name, "ext": "jpg", **PENDING_VARIANTS})
    engine = db.create_engine(settings)
    await db.create_schema(engine)
    async with engine.begin() as conn:
        await conn.execute(sa.insert(db.images), rows)
    return engine


def counting(kwargs_list: list[dict[str, Any]], renders: collections.Counter[int]) -> list[dict[str, Any]]:
    """The img worker, with every render execution counted by image id (the pool is real)."""

    class Counting:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def render_batch(self, requests: Any, **kw: Any) -> Any:
            renders.update(r.image_id for r in requests)
            return await self.inner.render_batch(requests, **kw)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    for kwargs in kwargs_list:
        original = kwargs["on_startup"]

        async def startup(ctx: dict[str, Any], original: Any = original) -> None:
            await original(ctx)
            ctx["backend"] = Counting(ctx["backend"])

        kwargs["on_startup"] = startup
    return kwargs_list


def rethumb_cli(settings: Settings, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, **settings.as_env()}
    command = [sys.executable, "-m", "fleet", "rethumb", *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def bulk_settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.replace(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'board.sqlite3'}",
        bulk_max_queued=400,
        bulk_batch_size=16,
        bulk_max_jobs=2,
    )


async def test_feeder_killed_midway_resumes_and_renders_every_image_exactly_once(
    bulk_settings: Settings, client: FleetClient
) -> None:
    settings = bulk_settings
    engine = await board(settings, 5000)
    await engine.dispose()
    run = BulkRun(client.redis, settings.namespace, Selection().run_id(settings))
    renders: collections.Counter[int] = collections.Counter()
    async with running_worker(counting(worker_settings(settings), renders)):
        feeder = rethumb_cli(settings, "--json")
        while int((await run.state()).get("fed", 0)) < 2000:
            assert feeder.poll() is None, feeder.communicate()
            await asyncio.sleep(0.05)
        feeder.send_signal(signal.SIGKILL)  # mid-run, mid-anything
        feeder.wait()
        fed_at_kill = int((await run.state())["fed"])
        assert fed_at_kill < 5000

        refused = rethumb_cli(settings, "--json")
        _, err = await asyncio.to_thread(refused.communicate, timeout=60)  # the worker runs on this loop
        assert refused.returncode == 2 and "--resume" in err

        resumed = rethumb_cli(settings, "--resume", "--json")
        out, err = await asyncio.to_thread(resumed.communicate, timeout=600)
        assert resumed.returncode == 0, err
        summary = json.loads(out.strip().splitlines()[-1])

        again = rethumb_cli(settings, "--json")
        out, _ = await asyncio.to_thread(again.communicate, timeout=60)
        rerun = json.loads(out.strip().splitlines()[-1])
    assert (summary["total"], summary["rendered"], summary["skipped"], summary["failed"]) == (
        5000,
        5000,
        0,
        0,
    )
    assert set(summary) >= {"total", "rendered", "skipped", "failed", "seconds", "images_per_s"}
    assert len(renders) == 5000 and set(renders.values()) == {1}  # every image rendered exactly once
    assert rerun["already_finished"] is True and rerun["rendered"] == 5000
    assert await client.redis.zcard(queue_key(settings.namespace, Queue.IMG_BULK)) == 0  # nothing re-queued
    thumbs = list((settings.storage_path / "thumbs").glob("2025-*.webp"))
    assert len(thumbs) == 5000


async def test_redis_stays_flat_while_feeding_100000_entries_with_no_worker(
    bulk_settings: Settings, tmp_path: Path
) -> None:
    bound = 2000
    engine = db.create_engine(bulk_settings)
    await db.create_schema(engine)
    async with engine.begin() as conn:
        rows = [{"image_id": i, "filename": f"2025-01-01-{i}", "ext": "jpg"} for i in range(1, 100_001)]
        await conn.execute(sa.insert(db.images), rows)
    with EmbeddedRedis() as server:  # a private server: its memory is ours alone
        settings = bulk_settings.replace(redis_url=server.url, bulk_max_queued=bound)
        async with await FleetClient.connect(settings) as client:
            before = int((await client.redis.info("memory"))["used_memory"])
            feeding = asyncio.create_task(
                rethumb(client.redis, settings, Selection(), engine=engine, poll_s=0.05)
            )
            run = BulkRun(client.redis, settings.namespace, Selection().run_id(settings))
            peak = 0
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                peak = max(peak, int((await client.redis.info("memory"))["used_memory"]) - before)
                await asyncio.sleep(0.1)
            state = await run.state()
            feeding.cancel()
            with pytest.raises(asyncio.CancelledError):
                await feeding
            queued_jobs = await client.redis.zcard(queue_key(settings.namespace, Queue.IMG_BULK))
    await engine.dispose()
    assert int(state["total"]) == 100_000
    assert bound <= int(state["fed"]) < bound + settings.bulk_batch_size  # topped up to the bound, no further
    assert queued_jobs == int(state["fed"]) // settings.bulk_batch_size
    # The bound this design promises: under 1 MiB of Redis for 2,000 queued images
    # (one arq job per 16 images), whatever the archive size. 100,000 one-image jobs would be ~39 MB.
    assert peak < 1 << 20, peak
    print(f"redis grew {peak} bytes for {state['fed']} queued images of 100,000")


async def test_skips_current_outputs_reindexes_only_changed_thumbnails_and_repairs_missing(
    bulk_settings: Settings, client: FleetClient
) -> None:
    with IqdbServer() as iqdb:
        settings = bulk_settings.replace(iqdb_url=iqdb.url)
        engine = await board(settings, 10, distinct=10)
        posts = lambda: sum(r.method == "POST" for r in iqdb.state.requests)  # noqa: E731
        async with running_worker(worker_settings(settings), _light(settings)):
            first = await rethumb(client.redis, settings, Selection(), engine=engine, poll_s=0.05)
            assert (first.rendered, first.skipped) == (10, 0)
            await _settle(lambda: posts() == 10)

            async def flags() -> set[Any]:
                async with engine.connect() as conn:
                    return set((await conn.execute(sa.select(db.images.c.medium, db.images.c.large))).all())

            await _settle(lambda: flags(), want={(0, 0)})  # small originals: PENDING rewritten to NONE

            again = await rethumb(client.redis, settings, Selection(), engine=engine, poll_s=0.05)
            assert again.already_finished and posts() == 10

            forced = await rethumb(
                client.redis, settings, Selection(), engine=engine, force=True, poll_s=0.05
            )
            assert (forced.rendered, forced.skipped) == (10, 0)
            await asyncio.sleep(0.5)
            assert posts() == 10  # same bytes: IQDB not told again

            part = await rethumb(client.redis, settings, Selection(ids=(1, 5)), engine=engine, poll_s=0.05)
            assert (part.total, part.rendered, part.skipped) == (5, 0, 5)  # current: skipped cheaply

            (settings.storage_path / "thumbs" / "2025-04-04-3.webp").unlink()
            repair = await rethumb(
                client.redis, settings, Selection(mode="missing"), engine=engine, poll_s=0.05
            )
            assert (repair.rendered, repair.skipped) == (1, 9)
            assert (settings.storage_path / "thumbs" / "2025-04-04-3.webp").exists()

        smaller = settings.replace(thumb_width=120, thumb_height=120)  # new settings: every output is stale
        async with running_worker(worker_settings(smaller), _light(smaller)):
            redo = await rethumb(client.redis, smaller, Selection(), engine=engine, poll_s=0.05)
            assert (redo.rendered, redo.skipped) == (10, 0)
            await _settle(lambda: posts() == 20)  # new thumbnail bytes: re-indexed
        await engine.dispose()


def _light(settings: Settings) -> list[dict[str, Any]]:
    from ratingworker.worker import db_worker_settings, iqdb_worker_settings

    return [iqdb_worker_settings(settings), db_worker_settings(settings)]


async def _settle(check: Any, want: Any = True, timeout_s: float = 30) -> None:
    """Until ``check()`` (a function or coroutine function) returns ``want``."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if asyncio.iscoroutine(got):
            got = await got
        if got == want:
            return
        assert time.monotonic() < deadline, got
        await asyncio.sleep(0.05)


async def test_uploads_overtake_queued_bulk_renders(storage: Path) -> None:
    name = images.jpeg(storage, "b.jpg", 1600, 1200)
    backend = ProcessPoolBackend(storage, options_of(RenderSettings()), size=1)
    finished: list[str] = []
    try:
        await backend.warm_up()

        async def render(label: str, priority: Priority) -> None:
            await backend.render_batch([RenderRequest(0, *name)], priority=priority)
            finished.append(label)

        bulk = [asyncio.create_task(render(f"bulk{i}", Priority.BULK)) for i in range(4)]
        await asyncio.sleep(0.02)  # bulk0 is rendering, bulk1-3 wait
        upload = asyncio.create_task(render("upload", Priority.UPLOAD))
        await asyncio.gather(*bulk, upload)
    finally:
        await backend.close()
    assert finished[:2] == ["bulk0", "upload"]  # the upload waited for one render, not three


async def test_a_reserved_process_lets_an_upload_start_during_a_saturating_bulk_run(storage: Path) -> None:
    name = images.jpeg(storage, "b.jpg", 1600, 1200)
    backend = ProcessPoolBackend(storage, options_of(RenderSettings()), size=2, reserve=1)
    started: list[str] = []
    try:
        await backend.warm_up()

        async def render(label: str, priority: Priority) -> None:
            await backend.render_batch([RenderRequest(0, *name)], priority=priority)
            started.append(label)

        bulk = [asyncio.create_task(render(f"bulk{i}", Priority.BULK)) for i in range(3)]
        await asyncio.sleep(0.02)
        assert backend.busy == 1  # bulk work never takes the reserved process
        upload = asyncio.create_task(render("upload", Priority.UPLOAD))
        await asyncio.sleep(0.01)
        assert backend.busy == 2  # the upload started at once, beside the bulk render
        await asyncio.gather(*bulk, upload)
    finally:
        await backend.close()
    assert started.index("upload") <= 1


async def test_dry_run_and_from_dir(bulk_settings: Settings, client: FleetClient) -> None:
    settings = bulk_settings
    for i in range(7):
        images.jpeg(settings.storage_path, f"dir-{i}.jpg", 300, 200)
    listing = Selection(from_dir=settings.storage_path / "fullsize")
    dry = await rethumb(client.redis, settings, listing, dry_run=True)
    assert (dry.total, dry.dry_run, dry.rendered) == (7, True, 0)
    assert await client.redis.zcard(queue_key(settings.namespace, Queue.IMG_BULK)) == 0
    async with running_worker(worker_settings(settings)):
        done = await rethumb(client.redis, settings, listing, poll_s=0.05)
    assert (done.total, done.rendered) == (7, 7)
    assert len(list((settings.storage_path / "thumbs").glob("dir-*.webp"))) == 7
