"""The light queues end to end: real Redis, MariaDB and SQLite, and an in-test IQDB server."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.iqdb_server import IqdbServer, fake_hash
from fleet.client import FleetClient
from fleet.db import image_reviews, images, probe_schema
from fleet.errors import JobFailedError
from fleet.keys import cron_name, pending_key, queue_key, rating_prior_key, result_key
from fleet.registry import Queue
from fleet.settings import Settings
from imgworker.worker import worker_settings as img_worker_settings
from ratingworker.worker import db_worker_settings, iqdb_worker_settings
from tests import images as files
from tests.board import PENDING_VARIANTS, add_images, add_review, add_votes, row
from tests.support import running_worker, wait_for


@pytest.fixture
def light_settings(settings: Settings, database_url: str) -> Settings:
    return settings.replace(database_url=database_url)


async def test_upload_render_flags_and_iqdb_chain(light_settings: Settings, db: AsyncEngine) -> None:
    with IqdbServer() as iqdb:
        settings = light_settings.replace(iqdb_url=iqdb.url)
        await add_images(db, 1, 2, **PENDING_VARIANTS)
        big = files.jpeg(settings.storage_path, "2025-01-01-1.jpg", 2500, 1600)  # medium + large
        small = files.jpeg(settings.storage_path, "2025-01-01-2.png", 900, 600)  # thumb only
        workers = (
            img_worker_settings(settings),
            iqdb_worker_settings(settings),
            db_worker_settings(settings),
        )
        async with await FleetClient.connect(settings) as client, running_worker(*workers):
            jobs = [await client.render_upload(1, *big), await client.render_upload(2, *small)]
            for job in jobs:
                await job.result(timeout=60, poll_delay=0.02)

            async def indexed() -> bool:
                posted = [r for r in iqdb.state.requests if r.method == "POST"]
                return len(posted) >= 2 and not await client.redis.zcard(
                    queue_key(settings.namespace, Queue.IQDB)
                )

            await wait_for(indexed, what="both IQDB jobs finished")
            render_end = {
                i: (await job.result_info()).finish_time.timestamp()
                for i, job in zip((1, 2), jobs, strict=True)
            }

        one, two = await row(db, images, image_id=1), await row(db, images, image_id=2)
        assert (one["medium"], one["large"]) == (1, 1)  # READY
        assert (two["medium"], two["large"]) == (0, 0)  # NONE
        posts = {int(r.path.rsplit("/", 1)[1]): r for r in iqdb.state.requests if r.method == "POST"}
        assert sorted(posts) == [1, 2]  # once each: a board without iqdb_hash is no reason to retry
        hashes = (await probe_schema(db)).can("iqdb_hash")
        for image_id, request in posts.items():
            assert request.file is not None and request.file.startswith(b"\xff\xd8\xff")  # a JPEG
            stored = (settings.storage_path / "iqdb" / f"2025-01-01-{image_id}.jpg").read_bytes()
            assert request.file == stored
            if hashes:
                assert (await row(db, images, image_id=image_id))["iqdb_hash"] == fake_hash(stored)
            # Chained, not delayed (the replaced design waited a fixed 5 s): IQDB hears about the
            # image as soon as the render ends; 1 s leaves room for a loaded machine.
            assert request.at - render_end[image_id] < 1.0, request.at - render_end[image_id]


async def test_iqdb_errors_retry_when_transient_and_fail_with_the_servers_text(
    light_settings: Settings, db: AsyncEngine
) -> None:
    with IqdbServer() as iqdb:
        settings = light_settings.replace(iqdb_url=iqdb.url, max_tries=4)
        await add_images(db, 5, 6)
        (settings.storage_path / "iqdb").mkdir()
        (settings.storage_path / "iqdb" / "a.jpg").write_bytes(files.pattern(64, 64).jpegsave_buffer())
        (settings.storage_path / "iqdb" / "b.jpg").write_bytes(b"GIF89a not a jpeg")
        async with (
            await FleetClient.connect(settings) as client,
            running_worker(iqdb_worker_settings(settings)),
        ):
            iqdb.state.fail_next = [503, 500]
            ok = await client.index_iqdb(5, "iqdb/a.jpg")
            assert (await ok.result(timeout=30, poll_delay=0.02))["image_id"] == 5
            assert (await ok.result_info()).job_try == 3  # two 5xx, then done

            rejected = await client.index_iqdb(6, "iqdb/b.jpg")
            with pytest.raises(JobFailedError, match="400 invalid_image") as failure:
                await rejected.result(timeout=30, poll_delay=0.02)
            assert failure.value.error_type == "IqdbRejected"
            assert (await rejected.result_info()).job_try == 1

            escape = await client.index_iqdb(6, "../../etc/passwd.jpg")
            with pytest.raises(JobFailedError) as failure:
                await escape.result(timeout=30, poll_delay=0.02)
            assert failure.value.error_type == "UnsafePathError"

            deleted = await client.delete_from_iqdb(5)
            assert (await deleted.result(timeout=30, poll_delay=0.02))["existed"] is True
            absent = await client.delete_from_iqdb(5)  # 404 counts as done
            assert (await absent.result(timeout=30, poll_delay=0.02))["existed"] is False
        if (await probe_schema(db)).can("iqdb_hash"):
            assert (await row(db, images, image_id=5))["iqdb_hash"] is None


async def test_iqdb_unreachable_is_transient(light_settings: Settings, db: AsyncEngine) -> None:
    from fleet.services import free_port

    settings = light_settings.replace(iqdb_url=f"http://127.0.0.1:{free_port()}", max_tries=2)
    await add_images(db, 1)
    (settings.storage_path / "iqdb").mkdir()
    (settings.storage_path / "iqdb" / "a.jpg").write_bytes(files.pattern(64, 64).jpegsave_buffer())
    async with await FleetClient.connect(settings) as client, running_worker(iqdb_worker_settings(settings)):
        job = await client.index_iqdb(1, "iqdb/a.jpg")
        with pytest.raises(JobFailedError, match=r"gave up after 2 tries.*ConnectError"):
            await job.result(timeout=30, poll_delay=0.02)


async def test_without_iqdb_url_indexing_is_off_with_one_log_line(
    light_settings: Settings, db: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    await add_images(db, 1)
    files.jpeg(light_settings.storage_path, "2025-01-01-1.jpg", 600, 400)
    caplog.set_level(logging.INFO)
    workers = (
        img_worker_settings(light_settings),
        iqdb_worker_settings(light_settings),
        db_worker_settings(light_settings),
    )
    async with await FleetClient.connect(light_settings) as client, running_worker(*workers):
        for _ in range(3):
            job = await client.render_upload(1, "2025-01-01-1", "jpg")
            result = await job.result(timeout=60, poll_delay=0.02)
            assert "iqdb" not in result["outputs"]
        assert await client.redis.zcard(queue_key(light_settings.namespace, Queue.IQDB)) == 0
    assert not (light_settings.storage_path / "iqdb").exists()
    off = [r for r in caplog.records if "IQDB_URL is not set" in r.getMessage()]
    assert len(off) == 1


async def test_a_burst_of_votes_coalesces_into_few_recalculations(
    light_settings: Settings, db: AsyncEngine
) -> None:
    await add_images(db, 1)
    ratings = [(k * 7) % 10 + 1 for k in range(1000)]
    async with (
        await FleetClient.connect(light_settings) as client,
        running_worker(db_worker_settings(light_settings)) as worker,
    ):
        queued = 0
        for start in range(0, 1000, 50):  # votes land in batches while the worker runs
            await add_votes(db, 1, ratings[start : start + 50], first_user=start + 1)
            # Fifty voters at once, as a burst is: the calls race each other, not the worker.
            calls = await asyncio.gather(*(client.recalculate_rating(1) for _ in range(50)))
            queued += sum(call is not None for call in calls)
        pending = pending_key(light_settings.namespace, "recalculate_rating", "1")

        async def drained() -> bool:
            return worker.jobs_complete == queued and not await client.redis.exists(pending)

        await wait_for(drained, what="every recalculation done")
        # The prior was cached by the first recalculation: check against the cached one.
        weight, prior_mean = json.loads(await client.redis.get(rating_prior_key(light_settings.namespace)))
    assert 1 <= queued <= 60, queued  # 1,000 votes, a few dozen recalculations at most
    got = await row(db, images, image_id=1)
    mean = sum(ratings) / 1000
    assert got["num_ratings"] == 1000
    assert got["rating"] == pytest.approx(mean, rel=1e-5)
    assert got["bayesian_rating"] == pytest.approx(
        (weight * prior_mean + 1000 * mean) / (weight + 1000), rel=1e-5
    )


async def test_a_vote_during_a_running_recalculation_queues_one_more(
    light_settings: Settings, db: AsyncEngine
) -> None:
    await add_images(db, 1)
    await add_votes(db, 1, [4])
    kwargs = db_worker_settings(light_settings)
    gate = asyncio.Event()
    started = asyncio.Event()
    original = kwargs["on_startup"]

    async def startup(ctx: dict[str, Any]) -> None:
        await original(ctx)
        engine = ctx["db"]

        class GatedEngine:
            """The real engine, but the first recalculation waits for the test's gate."""

            def begin(self) -> Any:
                started.set()
                return _Gated(engine.begin(), gate)

            def __getattr__(self, name: str) -> Any:
                return getattr(engine, name)

        ctx["db"] = GatedEngine()

    kwargs["on_startup"] = startup
    async with await FleetClient.connect(light_settings) as client, running_worker(kwargs) as worker:
        first = await client.recalculate_rating(1)
        assert first is not None
        await asyncio.wait_for(started.wait(), 10)  # the first recalculation is running now
        await add_votes(db, 1, [10], first_user=2)  # a vote lands during it
        second = await client.recalculate_rating(1)
        assert second is not None, "a vote during a running recalculation must queue another"
        assert await client.recalculate_rating(1) is None  # ...and only one
        gate.set()
        await first.result(timeout=30, poll_delay=0.02)
        await second.result(timeout=30, poll_delay=0.02)
        assert worker.jobs_complete == 2
    got = await row(db, images, image_id=1)
    assert (got["num_ratings"], got["rating"]) == (2, 7.0)


class _Gated:
    def __init__(self, inner: Any, gate: asyncio.Event) -> None:
        self.inner, self.gate = inner, gate

    async def __aenter__(self) -> Any:
        await self.gate.wait()
        return await self.inner.__aenter__()

    async def __aexit__(self, *exc: Any) -> Any:
        return await self.inner.__aexit__(*exc)


async def test_review_cron_runs_once_per_slot_across_replicas(
    light_settings: Settings, db: AsyncEngine
) -> None:
    from datetime import timedelta

    from fleet.board import utc_now

    settings = light_settings.replace(review_every_s=1)
    await add_images(db, 1)
    await add_review(db, 1, 1, utc_now() - timedelta(hours=1), [1, 1, 1])
    replicas = [db_worker_settings(settings) for _ in range(3)]
    async with await FleetClient.connect(settings) as client:

        async def slots() -> list[bytes]:
            """The cron's slots that ran (one result each)."""
            pattern = result_key(cron_name(settings.namespace, "close_expired_reviews") + ":*")
            return [k async for k in client.redis.scan_iter(pattern)]

        async with running_worker(*replicas) as workers:
            await wait_for(slots, until=lambda ran: len(ran) >= 2, what="two slots of the cron")
        # Counted once all replicas have stopped, so no run is half-way through.
        ran = await slots()
        runs = sum(w.jobs_complete for w in workers)
    assert len(ran) >= 2
    assert runs == len(ran)  # each slot ran once, whichever replica took it
    assert (await row(db, image_reviews, review_id=1))["status"] == 1  # closed by the first slot
