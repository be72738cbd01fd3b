"""Bulk re-rendering (``fleet rethumb``) on real Redis, real files, real processes."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bench.iqdb_server import IqdbServer
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
from tests.support import Gate, GatedStore, bulk_board, drained, rethumb_cli, running_worker, wait_for


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


async def test_feeder_killed_midway_resumes_and_renders_every_image_exactly_once(
    bulk_settings: Settings, client: FleetClient
) -> None:
    settings = bulk_settings
    engine = await bulk_board(settings, 5000)
    await engine.dispose()
    run = BulkRun(client.redis, settings.namespace, Selection().run_id(settings))
    renders: collections.Counter[int] = collections.Counter()
    async with running_worker(counting(worker_settings(settings), renders)):
        feeder = rethumb_cli(settings, "--json")

        async def fed() -> int:
            assert feeder.poll() is None, feeder.communicate()
            return int((await run.state()).get("fed", 0))

        await wait_for(fed, until=lambda n: n >= 2000, what="the feeder to queue 2,000 images")
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
    async with engine.begin() as conn:
        rows = [{"image_id": i, "filename": f"2025-01-01-{i}", "ext": "jpg"} for i in range(1, 100_001)]
        await conn.execute(sa.insert(db.images), rows)
    with EmbeddedRedis() as server:  # a private server: its memory is ours alone
        settings = bulk_settings.replace(redis_url=server.url, bulk_max_queued=bound)
        async with await FleetClient.connect(settings) as client:
            before = int((await client.redis.info("memory"))["used_memory"])
            polls: list[int] = []  # "fed" at each of the feeder's rounds
            feeding = asyncio.create_task(
                rethumb(
                    client.redis,
                    settings,
                    Selection(),
                    engine=engine,
                    poll_s=0.05,
                    progress=lambda counts, *_: polls.append(counts["fed"]),
                )
            )
            run = BulkRun(client.redis, settings.namespace, Selection().run_id(settings))
            peak = 0

            async def idle_at_the_bound() -> bool:
                """Five of the feeder's rounds at its bound: time for it to feed past it, if it would."""
                nonlocal peak
                peak = max(peak, int((await client.redis.info("memory"))["used_memory"]) - before)
                return sum(fed >= bound for fed in polls) >= 5

            await wait_for(idle_at_the_bound, what="the feeder to go round five times at its bound")
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
        engine = await bulk_board(settings, 10, distinct=10)
        posts = lambda: sum(r.method == "POST" for r in iqdb.state.requests)  # noqa: E731
        async with running_worker(worker_settings(settings), _light(settings)):
            first = await rethumb(client.redis, settings, Selection(), engine=engine, poll_s=0.05)
            assert (first.rendered, first.skipped) == (10, 0)
            await wait_for(posts, until=lambda n: n == 10, what="ten IQDB posts")

            async def flags() -> set[Any]:
                async with engine.connect() as conn:
                    return set((await conn.execute(sa.select(db.images.c.medium, db.images.c.large))).all())

            # Small originals: PENDING rewritten to NONE.
            await wait_for(flags, until=lambda f: f == {(0, 0)}, what="the flags rewritten")

            again = await rethumb(client.redis, settings, Selection(), engine=engine, poll_s=0.05)
            assert again.already_finished and posts() == 10

            forced = await rethumb(
                client.redis, settings, Selection(), engine=engine, force=True, poll_s=0.05
            )
            assert (forced.rendered, forced.skipped) == (10, 0)
            # Every follow-up of the forced run was queued before its images were recorded:
            # once the light queues have drained, IQDB has heard all it ever will of it.
            await wait_for(lambda: drained(client, Queue.IQDB, Queue.DB), what="the follow-ups to drain")
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
            await wait_for(posts, until=lambda n: n == 20, what="20 IQDB posts")  # new bytes: re-indexed
        await engine.dispose()


def _light(settings: Settings) -> list[dict[str, Any]]:
    from ratingworker.worker import db_worker_settings, iqdb_worker_settings

    return [iqdb_worker_settings(settings), db_worker_settings(settings)]


@dataclasses.dataclass
class HeldRenders:
    """Bulk renders queued on a real pool, the first (bulk0) held at the gate, so it is
    certainly still running; ``upload()`` queues an upload render; ``ended`` has the labels
    of the renders in the order they ended."""

    backend: ProcessPoolBackend
    gate: Gate
    bulk: list[asyncio.Task[None]]
    upload: Callable[[], asyncio.Task[None]]
    ended: list[str]


@contextlib.asynccontextmanager
async def bulk_renders_held(
    storage: Path, tmp_path: Path, bulk: int, **pool: int
) -> AsyncIterator[HeldRenders]:
    name = images.jpeg(storage, "b.jpg", 1600, 1200)
    held = images.jpeg(storage, "held.jpg", 1600, 1200)
    ended: list[str] = []
    with Gate(tmp_path / "gate") as gate:
        backend = ProcessPoolBackend(
            GatedStore(storage, gate.path, [held[0]]), options_of(RenderSettings()), **pool
        )
        try:
            await backend.warm_up()

            def render(label: str, original: tuple[str, str], priority: Priority) -> asyncio.Task[None]:
                async def run() -> None:
                    await backend.render_batch([RenderRequest(0, *original)], priority=priority)
                    ended.append(label)

                return asyncio.create_task(run())

            tasks = [render(f"bulk{i}", held if i == 0 else name, Priority.BULK) for i in range(bulk)]
            # All of them ran up to the pool in the same turn of the loop: the others have queued.
            await wait_for(lambda: backend.busy, what="bulk0 to render (held at the gate)")
            yield HeldRenders(backend, gate, tasks, lambda: render("upload", name, Priority.UPLOAD), ended)
        finally:
            await backend.close()


async def test_uploads_overtake_queued_bulk_renders(storage: Path, tmp_path: Path) -> None:
    async with bulk_renders_held(storage, tmp_path, bulk=4, size=1) as held:  # bulk1-3 wait
        upload = held.upload()
        # The upload task runs (and queues) before bulk0's result can be read: the event loop
        # runs the tasks made ready earlier first, and bulk0 cannot end before the gate opens.
        held.gate.open()
        await asyncio.gather(*held.bulk, upload)
    assert held.ended[:2] == ["bulk0", "upload"]  # the upload waited for one render, not three


async def test_a_reserved_process_lets_an_upload_start_during_a_saturating_bulk_run(
    storage: Path, tmp_path: Path
) -> None:
    async with bulk_renders_held(storage, tmp_path, bulk=3, size=2, reserve=1) as held:
        assert held.backend.busy == 1  # bulk1-2 have queued: bulk work never takes the reserved process
        upload = held.upload()
        # While bulk0 is held, only the reserved process can run the upload.
        await wait_for(lambda: held.backend.busy, until=lambda n: n == 2, what="the upload beside bulk0")
        await upload
        held.gate.open()
        await asyncio.gather(*held.bulk)
    assert held.ended[0] == "upload"


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
