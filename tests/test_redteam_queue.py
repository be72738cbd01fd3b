"""Red-team findings on the queue layer, each reproduced for real: planted envelopes, Redis
outages past redis-py's retries, expired jobs, bulk retries, oversized strings, control
characters, dead-letter floods and Redis errors that retrying cannot cure."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from fleet import health
from fleet.bulk import Selection, rethumb
from fleet.client import FleetClient
from fleet.deadletters import DeadLetter, DeadLetters
from fleet.errors import JobFailedError, PayloadTooLargeError
from fleet.failures import classify
from fleet.keys import dead_letter_key, in_progress_key, job_key, queue_key, replicas_key, result_key
from fleet.registry import INDEX_IQDB, IqdbIndex, Queue
from fleet.services import EmbeddedRedis, free_port
from fleet.settings import Settings
from fleet.worker import Context, error_fields, job_fields
from imgworker.worker import worker_settings
from tests import images
from tests.support import fleet_cli, iqdb_worker, plant, running_worker, wait_for

CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")  # every control character but the newline


async def ok_index(ctx: Context, payload: Any) -> str:
    return "ok"


# --- 1 and 12: planted envelopes and oversized payloads -------------------------------------


async def test_malformed_envelopes_are_dead_lettered_and_the_worker_lives_on(
    settings: Settings, client: FleetClient
) -> None:
    now = int(time.time() * 1000)
    good = {"image_id": 1, "path": "iqdb/a.jpg"}

    def envelope(**fields: Any) -> bytes:
        doc = {"f": "index_iqdb", "a": [good], "k": {}, "t": 1, "et": now, **fields}
        return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()

    planted = {
        "t-str": (envelope(t="x"), "try number"),
        "t-list": (envelope(t=[1]), "try number"),
        "t-huge": (envelope(t=10**12), "try number"),
        "t-bool": (envelope(t=True), "try number"),
        "et-str": (envelope(et="x"), "enqueue time"),
        "et-huge": (envelope(et=1e300), "enqueue time"),
        "et-missing": (envelope(et=...), "enqueue time"),
        "k-extra": (envelope(k={"x": 1}), "keyword arguments"),
        "k-missing": (envelope(k=...), "keyword arguments"),
        "a-extra": (envelope(a=[good, good]), "takes 1 argument(s), got 2"),
        "quarantine": (envelope(f="fleet:quarantine", a=[{}]), "no function 'fleet:quarantine'"),
        "long-string": (envelope(a=[{"image_id": 1, "path": "x" * 2000}]), "a string of 2000 characters"),
        "huge": (envelope(a=[{"image_id": 1, "path": "x" * (10 << 20)}]), "over the bound of"),
    }
    async with running_worker(iqdb_worker(settings, ok_index)) as worker:
        for name, (raw, _) in planted.items():
            await plant(client, Queue.IQDB, f"{settings.namespace}-{name}", raw)
        letters = DeadLetters.of(client.redis, settings)

        async def all_dead() -> bool:
            return await letters.count("iqdb") == len(planted)

        await wait_for(all_dead, what="every planted job dead-lettered")
        assert not worker.main_task.done(), "the worker died of a planted job"
        normal = await client.index_iqdb(7, "iqdb/ok.jpg")  # and it still runs real work
        assert await normal.result(timeout=30, poll_delay=0.02) == "ok"
    found = {letter.job_id[len(settings.namespace) + 1 :]: letter for letter in await letters.list("iqdb")}
    for name, (_, reason) in planted.items():
        letter = found[name]
        assert letter.error_type == "InvalidJob", (name, letter)
        assert reason in letter.message, (name, letter.message)
        stored = await client.redis.strlen(dead_letter_key(settings.namespace, letter.job_id))
        assert stored < 10_000, (name, stored)  # the 10 MiB name is not copied into the letter
    queued = await client.redis.zcard(queue_key(settings.namespace, Queue.IQDB))
    assert queued == 0  # nothing planted stays queued to kill the next worker


async def test_an_oversized_payload_is_refused_at_enqueue(client: FleetClient, settings: Settings) -> None:
    with pytest.raises(PayloadTooLargeError, match="render_upload: payload refused"):
        await client.render_upload(1, "x" * (10 << 20), "jpg")
    with pytest.raises(PayloadTooLargeError, match="a string of 2000 characters"):
        await client.index_iqdb(1, "y" * 2000)
    for queue in Queue:
        assert await client.redis.zcard(queue_key(settings.namespace, queue)) == 0


async def test_a_huge_error_leaves_a_short_result_dead_letter_and_log(
    settings: Settings, client: FleetClient, caplog: pytest.LogCaptureFixture
) -> None:
    async def index(ctx: Context, payload: Any) -> None:
        raise KeyError("e" * (20 << 20))

    caplog.set_level(logging.INFO)
    async with running_worker(iqdb_worker(settings, index)):
        job = await client.index_iqdb(1, "iqdb/a.jpg")
        with pytest.raises(JobFailedError, match=r"bytes cut\)") as failure:
            await job.result(timeout=60, poll_delay=0.05)
    assert len(failure.value.message) < 4096
    assert await client.redis.strlen(result_key(job.job_id)) < 10_000
    assert await client.redis.strlen(dead_letter_key(settings.namespace, job.job_id)) < 10_000
    logged = sum(len(logging.Formatter().format(record)) for record in caplog.records)
    assert logged < 100_000, logged


# --- 6: background tasks outlive a Redis outage of any length -------------------------------


async def test_heartbeat_lock_renewal_and_metrics_outlive_a_long_redis_outage(
    storage: Path, tmp_path: Path
) -> None:
    data = tmp_path / "redis-data"
    data.mkdir()
    server = EmbeddedRedis(appendonly=True, workdir=data).start()
    settings = Settings(
        redis_url=server.url, storage_path=storage, namespace="outage", runtime_dir=tmp_path / "run",
        health_interval_s=1.0, lock_ttl_s=1.5, metrics_port=free_port(), poll_delay_s=0.02,
    )  # fmt: skip
    release = {1: asyncio.Event(), 2: asyncio.Event()}

    async def index(ctx: Context, payload: Any) -> str:
        await release[payload.image_id].wait()
        return "ok"

    kwargs = iqdb_worker(settings, index, job_timeout_s=120)
    # redis-py's retry budget, a minute in production, exhausted at once here.
    kwargs["redis_settings"].retry = Retry(NoBackoff(), 1)
    replicas = replicas_key(settings.namespace, Queue.IQDB)
    try:
        async with running_worker(kwargs):
            async with await FleetClient.connect(settings) as client:
                first = await client.index_iqdb(1, "iqdb/a.jpg")
                await wait_for(lambda: client.redis.exists(in_progress_key(first.job_id)), what="job 1")
            server.kill()
            # Time is the subject: an outage of three lock TTLs, every background task failing
            # several rounds (their own timers, not the test's, set the pace).
            await asyncio.sleep(3 * settings.lock_ttl_s)
            restarted_at = time.time()
            server.start()
            async with await FleetClient.connect(settings) as client:

                async def beating() -> bool:
                    return (await client.redis.zscore(replicas, health.replica_id()) or 0) > restarted_at

                await wait_for(beating, what="a heartbeat after the outage")
                release[1].set()
                second = await client.index_iqdb(2, "iqdb/b.jpg")
                lock = in_progress_key(second.job_id)
                await wait_for(lambda: client.redis.exists(lock), what="job 2 running")
                first_ttl = await client.redis.pttl(lock)

                async def renewed() -> bool:
                    return bool(await client.redis.pttl(lock) > first_ttl)

                await wait_for(renewed, what="the lock renewed after the outage")
                await client.enqueue(INDEX_IQDB, IqdbIndex(3, "iqdb/c.jpg"), defer_s=600)

                async def refreshed() -> bool:
                    return REGISTRY.get_sample_value("fleet_queue_deferred", {"queue": "iqdb"}) == 1

                await wait_for(refreshed, what="the queue gauges refreshed after the outage")
                release[2].set()
                assert await second.result(timeout=30, poll_delay=0.05) == "ok"
    finally:
        for event in release.values():
            event.set()
        server.stop()


# --- 7: jobs whose key expired are dead-lettered, and the expiry follows JOB_EXPIRY_S ----------


async def test_a_job_whose_key_expired_is_dead_lettered_not_dropped(
    settings: Settings, client: FleetClient
) -> None:
    job = await client.index_iqdb(5, "iqdb/e.jpg")
    day_ms = 24 * 3600 * 1000
    assert await client.redis.pttl(job_key(job.job_id)) > day_ms  # JOB_EXPIRY_S, not arq's day
    voted = await client.recalculate_rating(5)
    assert voted is not None and await client.redis.pttl(job_key(voted.job_id)) > day_ms
    await client.redis.delete(job_key(job.job_id))  # as the key's expiry would
    async with running_worker(iqdb_worker(settings, ok_index)):
        letters = DeadLetters.of(client.redis, settings)
        [letter] = await wait_for(lambda: letters.list("iqdb"), what="the expired job's dead letter")
    assert (letter.job_id, letter.queue, letter.error_type) == (job.job_id, "iqdb", "JobExpired")
    assert "expired before it ran" in letter.message
    assert await client.redis.zcard(queue_key(settings.namespace, Queue.IQDB)) == 0


async def test_a_job_whose_lock_is_lost_while_it_runs_is_not_started_again_by_the_same_worker(
    settings: Settings, client: FleetClient
) -> None:
    """After a Sentinel failover the promoted replica may have let a running job's lock expire
    (the renewals were never replicated): the worker running it sees it due and unlocked. arq
    would start it a second time beside the first, and the two runs' bookkeeping then fails
    the job (KeyError in arq's task table: seen in the failover test). A job still running
    here is never started again here; another worker may, to the same result."""
    starts: collections.Counter[int] = collections.Counter()
    release = asyncio.Event()

    async def index(ctx: Context, payload: Any) -> str:
        starts[payload.image_id] += 1
        if payload.image_id == 1:
            await release.wait()
        return "ok"

    async with running_worker(iqdb_worker(settings, index)):
        held = await client.index_iqdb(1, "iqdb/held.jpg")
        await wait_for(lambda: starts[1], what="job 1 running")
        await client.redis.delete(in_progress_key(held.job_id))  # its lock, lost in a failover
        # A job queued after the loss: the poll that starts it also sees job 1, due and unlocked.
        after = await client.index_iqdb(2, "iqdb/after.jpg")
        assert await after.result(timeout=60, poll_delay=0.05) == "ok"
        release.set()
        assert await held.result(timeout=60, poll_delay=0.05) == "ok"
    assert starts == {1: 1, 2: 1}


# --- 8: `fleet dead retry` of a bulk image renders it -------------------------------------------


async def test_dead_retry_of_a_failed_bulk_image_renders_it(settings: Settings, client: FleetClient) -> None:
    settings = settings.replace(bulk_batch_size=4)
    for i in range(3):
        images.jpeg(settings.storage_path, f"dir-{i}.jpg", 300, 200)
    broken = settings.storage_path / "fullsize" / "dir-9.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    listing = Selection(from_dir=settings.storage_path / "fullsize")
    async with running_worker(worker_settings(settings)):
        done = await rethumb(client.redis, settings, listing, poll_s=0.05)
        assert (done.rendered, done.failed) == (3, 1)
        [letter] = await DeadLetters.of(client.redis, settings).list("img-bulk")
        assert letter.function == "render_batch"
        broken.unlink()
        images.jpeg(settings.storage_path, "dir-9.jpg", 320, 240)  # the cause is fixed
        retried = fleet_cli(settings, "dead", "retry", letter.job_id)
        assert retried.returncode == 0, retried.stderr
        thumb = settings.storage_path / "thumbs" / "dir-9.webp"

        async def rendered() -> bool:
            return thumb.exists()

        await wait_for(rendered, what="the retried image's thumbnail")
    assert await DeadLetters.of(client.redis, settings).list() == []


# --- 15: control characters never reach the terminal --------------------------------------------


async def test_dead_list_and_job_events_escape_control_characters(
    settings: Settings, client: FleetClient
) -> None:
    letters = DeadLetters.of(client.redis, settings)
    evil = "\x1b[31mred\r\x07"
    await letters.add(
        DeadLetter(f"id{evil}", "img", f"render{evil}", [], f"Kind{evil}", f"msg{evil}", 1, time.time())
    )
    listed = fleet_cli(settings, "dead", "list")
    assert listed.returncode == 0, listed.stderr
    assert "\\x1b[31mred\\r\\x07" in listed.stdout
    assert not CONTROL.search(listed.stdout), repr(listed.stdout)
    ctx = {"queue": Queue.IMG, "job_id": f"j{evil}", "job_try": 1}
    fields = {**job_fields(ctx, f"job{evil}", None), **error_fields(f"Kind{evil}", f"boom{evil}")}
    assert not any(CONTROL.search(str(value)) for value in fields.values()), fields


# --- 18: dead letters are capped and paged ------------------------------------------------------


async def test_dead_letters_are_capped_per_queue_and_listed_a_page_at_a_time(
    settings: Settings, client: FleetClient
) -> None:
    settings = settings.replace(dead_letter_max=100)
    letters = DeadLetters.of(client.redis, settings)
    start = time.time() - 1000
    for i in range(250):
        await letters.add(DeadLetter(f"L{i:03d}", "img", "render_upload", [], "E", "m", 1, start + i))
    assert await letters.count("img") == 100
    assert await letters.dropped("img") == 150
    kept = [letter.job_id for letter in await letters.list("img")]
    assert kept == [f"L{i:03d}" for i in range(150, 250)]  # the oldest were dropped
    assert not await client.redis.exists(dead_letter_key(settings.namespace, "L000"))  # with their letters
    assert [x.job_id for x in await letters.page("img", limit=3, offset=1)] == ["L248", "L247", "L246"]
    listed = fleet_cli(settings, "dead", "list", "--limit", "10")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert [line.split()[0] for line in lines if line.startswith("L")] == [
        f"L{i}" for i in range(249, 239, -1)
    ]
    assert lines[-1].startswith("1-10 of 100 dead letter(s)") and "150 older dropped" in lines[-1]


# --- 19: Redis errors retrying cannot cure are permanent ----------------------------------------


async def _raised(action: Callable[[], Awaitable[Any]]) -> BaseException:
    try:
        await action()
    except Exception as exc:  # noqa: BLE001 - the error is the point
        return exc
    raise AssertionError("no error raised")


async def test_classify_tells_redis_errors_that_can_succeed_later_from_those_that_never_will(
    redis_url: str, namespace: str
) -> None:
    with EmbeddedRedis(extra_args=["--requirepass", "s3cret"]) as server:
        url = f"redis://:s3cret@127.0.0.1:{server.port}/0"
        admin = aioredis.Redis.from_url(url)
        await admin.execute_command("ACL", "SETUSER", "reader", "on", ">pw", "~*", "+get")
        reader = aioredis.Redis.from_url(f"redis://reader:pw@127.0.0.1:{server.port}/0")
        wrong = aioredis.Redis.from_url(f"redis://:wrong@127.0.0.1:{server.port}/0")
        slow = aioredis.Redis.from_url(url, socket_timeout=0.1)
        closed = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
        await admin.set("s", "x")
        rows: list[tuple[str, Callable[[], Awaitable[Any]], bool]] = [
            ("WRONGTYPE", lambda: admin.lpush("s", 1), True),
            ("NOSCRIPT", lambda: admin.evalsha("0" * 40, 0), True),
            ("wrong password", lambda: wrong.ping(), True),
            ("ACL refused", lambda: reader.set("t", 1), True),
            ("bad argument type", lambda: admin.set("t", {"a": 1}), True),
            ("connection refused", lambda: closed.ping(), False),
            ("timeout", lambda: slow.blpop(["empty"], timeout=2), False),
        ]
        failures = {name: classify(await _raised(act)) for name, act, _ in rows}
        await admin.config_set("maxmemory", "1")
        failures["out of memory"] = classify(await _raised(lambda: admin.set("big", "x" * 1000)))
        await admin.config_set("maxmemory", "0")
        await admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
        failures["read-only replica"] = classify(await _raised(lambda: admin.set("t", 1)))
        for client in (admin, reader, wrong, slow, closed):
            await client.aclose()
    expected = {name: permanent for name, _, permanent in rows} | {
        "out of memory": False,
        "read-only replica": False,
    }
    assert {name: f.permanent for name, f in failures.items()} == expected, {
        n: (f.error_type, str(f)) for n, f in failures.items()
    }
    assert classify(redis_errors.BusyLoadingError("LOADING")).permanent is False
    assert classify(ConnectionRefusedError()).permanent is False
    assert classify(ValueError("bug")).error_type == "UnexpectedValueError"
