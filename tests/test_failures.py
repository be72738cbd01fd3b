"""The failure model: every job ends done, retried, or dead-lettered with a reason.

Real Redis, real pyvips, real worker processes killed for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import pyvips
from arq.jobs import JobStatus

from fleet.client import FleetClient
from fleet.deadletters import DeadLetters
from fleet.errors import JobFailedError, TransientError
from fleet.keys import in_progress_key, job_key, queue_key
from fleet.processes import start_worker, wait_healthy
from fleet.registry import DELETE_FROM_IQDB, INDEX_IQDB, Queue
from fleet.settings import Settings
from fleet.worker import Context, build_worker, handles
from imgworker.worker import worker_settings
from ratingworker.worker import iqdb_worker_settings
from tests import images
from tests.conftest import running_worker


def letters(client: FleetClient) -> DeadLetters:
    return DeadLetters(client.redis, client.settings.namespace, client.settings.dead_letter_ttl_s)


def iqdb_worker(settings: Settings, index: Any) -> dict[str, Any]:
    """An IQDB-queue worker whose index job is ``index`` (to provoke failures on purpose)."""

    @handles(DELETE_FROM_IQDB)
    async def delete(ctx: Context, payload: Any) -> None:
        return None

    return build_worker(Queue.IQDB, [handles(INDEX_IQDB)(index), delete], settings, job_timeout_s=0.5)


async def test_broad_except_in_job_code_cannot_swallow_a_retry(
    settings: Settings, client: FleetClient
) -> None:
    calls: list[int] = []

    async def index(ctx: Context, payload: Any) -> str:
        calls.append(ctx["job_try"])
        try:
            if ctx["job_try"] < 3:
                raise TransientError("IQDB is restarting")
        except Exception:  # noqa: BLE001 - the replaced design's mistake, here on purpose
            return "swallowed"
        return "done"

    async with running_worker(iqdb_worker(settings, index)):
        job = await client.index_iqdb(1, "iqdb/a.jpg")
        assert await job.result(timeout=30, poll_delay=0.02) == "done"
    assert calls == [1, 2, 3]


async def test_unexpected_errors_and_timeouts_end_as_dead_letters(
    settings: Settings, client: FleetClient
) -> None:
    settings = settings.replace(max_tries=2)

    async def index(ctx: Context, payload: Any) -> None:
        if payload.image_id == 1:
            raise KeyError("bug")
        await asyncio.sleep(5)  # past the 0.5 s job timeout

    async with running_worker(iqdb_worker(settings, index)):
        bug = await client.index_iqdb(1, "iqdb/a.jpg")
        slow = await client.index_iqdb(2, "iqdb/b.jpg")
        with pytest.raises(JobFailedError, match="KeyError") as bug_failure:
            await bug.result(timeout=30, poll_delay=0.02)
        with pytest.raises(JobFailedError, match="gave up after 2 tries") as slow_failure:
            await slow.result(timeout=30, poll_delay=0.02)
    assert bug_failure.value.error_type == "UnexpectedKeyError"
    assert slow_failure.value.error_type == "JobTimeout"  # a timeout is retried, unlike plain arq
    dead = {letter.job_id: letter for letter in await letters(client).list()}
    assert dead[bug.job_id].tries == 1 and dead[bug.job_id].function == "index_iqdb"
    assert dead[bug.job_id].args == [{"image_id": 1, "path": "iqdb/a.jpg"}]
    assert dead[slow.job_id].tries == 2 and dead[slow.job_id].queue == "iqdb"


async def plant(client: FleetClient, queue: Queue, job_id: str, raw: bytes) -> None:
    """Write a job straight into Redis, as an attacker with Redis access could."""
    await client.redis.set(job_key(job_id), raw)
    await client.redis.zadd(queue_key(client.settings.namespace, queue), {job_id: time.time() * 1000})


async def test_planted_payloads_are_dead_lettered_never_run(settings: Settings, client: FleetClient) -> None:
    marker = settings.storage_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    now = int(time.time() * 1000)
    planted = {
        "pickle": pickle.dumps({"f": "render_upload", "a": [Evil()], "k": {}, "t": 1, "et": now}),
        "unknown": json.dumps({"f": "os.system", "a": ["touch x"], "k": {}, "t": 1, "et": now}).encode(),
        "badargs": json.dumps(
            {"f": "render_upload", "a": [{"image_id": "1;"}], "k": {}, "t": 1, "et": now}
        ).encode(),
        "garbage": b"\x00\xff not json at all",
    }
    async with running_worker(worker_settings(settings)):
        for job_id, raw in planted.items():
            await plant(client, Queue.IMG, f"{settings.namespace}-{job_id}", raw)
        dead = letters(client)

        async def all_dead() -> bool:
            return len(await dead.list("img")) == len(planted)

        deadline = time.monotonic() + 30
        while not await all_dead():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    found = {letter.job_id.rsplit("-", 1)[1]: letter for letter in await dead.list("img")}
    assert {k: v.error_type for k, v in found.items()} == {
        "pickle": "InvalidJob",
        "unknown": "InvalidJob",
        "badargs": "InvalidPayloadError",
        "garbage": "InvalidJob",
    }
    assert "not a JSON job" in found["pickle"].message
    assert "no function 'os.system'" in found["unknown"].message
    assert "image_id" in found["badargs"].message
    assert not marker.exists()


def fleet_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings.as_env()}
    return subprocess.run([sys.executable, "-m", "fleet", *args], env=env, capture_output=True, text=True)


async def test_dead_letter_cli_lists_retries_with_fresh_tries_and_purges(
    settings: Settings, client: FleetClient
) -> None:
    async with running_worker(worker_settings(settings)):
        missing = await client.render_upload(1, "late-upload", "jpg")
        with pytest.raises(JobFailedError, match="does not exist"):
            await missing.result(timeout=30, poll_delay=0.02)
        other = await client.render_upload(2, "never", "jpg")
        with pytest.raises(JobFailedError):
            await other.result(timeout=30, poll_delay=0.02)

        listed = fleet_cli(settings, "dead", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        rows = [json.loads(line) for line in listed.stdout.splitlines()]
        assert {r["job_id"] for r in rows} == {missing.job_id, other.job_id}
        assert all(r["error_type"] == "MissingOriginalError" and r["queue"] == "img" for r in rows)
        human = fleet_cli(settings, "dead", "list", "--queue", "img")
        assert "2 dead letter(s)" in human.stdout and "MissingOriginalError" in human.stdout

        images.jpeg(settings.storage_path, "late-upload.jpg", 640, 480)  # the cause is fixed
        retried = fleet_cli(settings, "dead", "retry", missing.job_id)
        assert retried.returncode == 0, retried.stderr
        new_id = retried.stdout.split()[-1]
        again = await client.job(new_id)
        assert (await again.result(timeout=30, poll_delay=0.02))["ok"] is True
        assert (await again.result_info()).job_try == 1  # a fresh try count

        assert [letter.job_id for letter in await letters(client).list()] == [other.job_id]
        purged = fleet_cli(settings, "dead", "purge")
        assert purged.stdout.strip() == "purged 1 dead letter(s)"
        assert await letters(client).list() == []


async def test_a_render_that_loses_its_process_twice_is_dead_lettered(
    settings: Settings, client: FleetClient
) -> None:
    settings = settings.replace(render_timeout_s=0.05, img_pool_size=1)
    name = images.write(settings.storage_path, "huge.png", images.pattern(6000, 6000), compression=1)
    async with running_worker(worker_settings(settings)):
        job = await client.render_upload(1, *name)
        with pytest.raises(JobFailedError, match="the second time for this original") as failure:
            await job.result(timeout=60, poll_delay=0.02)
        assert (await job.result_info()).job_try == 2  # once retried, then dead
    assert failure.value.error_type == "RenderTimeout"


def descendants(pid: int) -> set[int]:
    """Every process below ``pid``, from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


async def _all_gone(pids: set[int]) -> bool:
    return not any(Path(f"/proc/{pid}").exists() for pid in pids)


async def wait_for(predicate: Any, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_sigkilled_worker_loses_nothing_and_recovers_within_the_lock_ttl(
    settings: Settings, client: FleetClient
) -> None:
    settings = settings.replace(lock_ttl_s=2.0, img_pool_size=1)
    name = images.write(settings.storage_path, "big.png", images.pattern(6000, 6000), compression=1)
    victim = start_worker(["img"], settings)
    try:
        await wait_healthy(client, Queue.IMG)
        job = await client.render_upload(1, *name)
        in_progress = in_progress_key(job.job_id)
        await wait_for(lambda: client.redis.exists(in_progress))
        render_processes = descendants(victim.pid)
        assert render_processes  # the forkserver and the render process
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        killed_at = time.monotonic()
        rescuer = start_worker(["img"], settings)
        try:
            result = await job.result(timeout=60, poll_delay=0.02)
            recovery_s = time.monotonic() - killed_at
        finally:
            rescuer.terminate()
            rescuer.wait(30)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert result["ok"] is True
    assert (await job.result_info()).job_try == 2
    await wait_for(lambda: _all_gone(render_processes), 30)  # no orphan keeps rendering
    # Lock expiry (2 s) + a poll + one render; arq's own lock would have held for the job timeout + 10 s.
    assert recovery_s < settings.lock_ttl_s + 10, recovery_s
    print(f"recovered {recovery_s:.2f} s after SIGKILL (LOCK_TTL_S={settings.lock_ttl_s})")
    assert not list(settings.storage_path.rglob(".*.tmp"))


async def test_sigterm_drains_running_jobs_and_leaves_the_rest_queued(
    settings: Settings, client: FleetClient
) -> None:
    settings = settings.replace(img_pool_size=1, img_max_jobs=1, drain_grace_s=20)
    big = images.write(settings.storage_path, "big.png", images.pattern(6000, 6000), compression=1)
    small = [images.jpeg(settings.storage_path, f"s{i}.jpg", 400, 300) for i in range(3)]
    worker = start_worker(["img"], settings)
    try:
        await wait_healthy(client, Queue.IMG)
        running = await client.render_upload(1, *big)
        await wait_for(lambda: client.redis.exists(in_progress_key(running.job_id)))
        waiting = [await client.render_upload(10 + i, *name) for i, name in enumerate(small)]
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    assert (await running.result(timeout=1))["ok"] is True  # finished inside the grace period
    queued = await client.redis.zrange(queue_key(settings.namespace, Queue.IMG), 0, -1)
    assert sorted(q.decode() for q in queued) == sorted(j.job_id for j in waiting)  # untouched
    async with running_worker(worker_settings(settings)):
        for job in waiting:
            assert (await job.result(timeout=30, poll_delay=0.02))["ok"] is True


async def test_jobs_still_running_when_the_drain_grace_ends_go_back_to_the_queue(
    settings: Settings, client: FleetClient, tmp_path: Path
) -> None:
    from tests.iqdb_server import IqdbServer

    with IqdbServer() as iqdb:
        iqdb.state.delay_s = 5.0  # longer than the grace
        settings = settings.replace(
            iqdb_url=iqdb.url, drain_grace_s=1, database_url=f"sqlite+aiosqlite:///{tmp_path / 'b.sqlite3'}"
        )
        from fleet.db import create_engine, create_schema

        engine = create_engine(settings)
        await create_schema(engine)
        await engine.dispose()
        (settings.storage_path / "iqdb").mkdir()
        (settings.storage_path / "iqdb" / "a.jpg").write_bytes(images.pattern(64, 64).jpegsave_buffer())
        worker = start_worker(["iqdb"], settings)
        try:
            await wait_healthy(client, Queue.IQDB)
            job = await client.index_iqdb(1, "iqdb/a.jpg")
            await wait_for(lambda: client.redis.exists(in_progress_key(job.job_id)))
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(30) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
        assert await job.status() == JobStatus.queued  # cancelled at the end of the grace, requeued
        iqdb.state.delay_s = 0.0
        async with running_worker(iqdb_worker_settings(settings)):
            assert (await job.result(timeout=30, poll_delay=0.02))["image_id"] == 1
        assert (await job.result_info()).job_try == 2


async def follow_ups(client: FleetClient, queue: Queue) -> list[dict[str, Any]]:
    """The payloads of the jobs waiting on ``queue`` (no light worker runs in these tests)."""
    queued = await client.redis.queued_jobs(queue_name=queue_key(client.settings.namespace, queue))
    return [dict(job.args[0]) for job in queued]


async def test_a_large_that_cannot_be_written_leaves_the_thumbnail_and_is_retried_then_dead_lettered(
    settings: Settings, client: FleetClient
) -> None:
    # IQDB on (nothing listens there: no IQDB worker runs), so the IQDB JPEG is rendered too.
    settings = settings.replace(max_tries=2, iqdb_url="http://127.0.0.1:9")
    name = images.jpeg(settings.storage_path, "2025-12-01-5.jpg", 3000, 2000)
    (settings.storage_path / "large").write_text("a file where the large folder should be")
    async with running_worker(worker_settings(settings)):
        job = await client.render_upload(5, *name)
        with pytest.raises(JobFailedError, match="gave up after 2 tries") as failure:
            await job.result(timeout=60, poll_delay=0.02)
        info = await job.result_info()
    assert info is not None and info.job_try == 2  # transient: retried once, then given up
    assert failure.value.error_type == "StorageError"
    assert "large: StorageError: cannot create" in failure.value.message
    [letter] = await letters(client).list()
    assert (letter.job_id, letter.tries, letter.error_type) == (job.job_id, 2, "StorageError")
    assert "large: StorageError" in letter.message

    thumb = pyvips.Image.new_from_file(str(settings.storage_path / "thumbs" / "2025-12-01-5.webp"))
    assert (thumb.width, thumb.height, thumb.avg() > 0) == (500, 333, True)  # decodes, the right size
    medium = pyvips.Image.new_from_file(str(settings.storage_path / "medium" / "2025-12-01-5.jpg"))
    assert (medium.width, medium.height) == (1280, 853)
    # Each try queued the follow-ups of what it made: PENDING for large while a retry could
    # still make it, NONE once given up (the board then serves the original).
    flags = await follow_ups(client, Queue.DB)
    assert sorted((f["medium"], f["large"]) for f in flags) == [(1, 0), (1, 2)]
    assert [f["path"] for f in await follow_ups(client, Queue.IQDB)] == ["iqdb/2025-12-01-5.jpg"] * 2


async def test_a_variant_in_a_format_we_cannot_write_leaves_the_thumbnail_and_is_dead_lettered_at_once(
    settings: Settings, client: FleetClient
) -> None:
    # Browsers save JPEGs as .jfif: it decodes, but there is no encoder for "the original's format".
    filename, _ = images.jpeg(settings.storage_path, "2025-12-01-6.jpg", 3000, 2000)
    (settings.storage_path / "fullsize" / f"{filename}.jpg").rename(
        settings.storage_path / "fullsize" / f"{filename}.jfif"
    )
    async with running_worker(worker_settings(settings)):
        job = await client.render_upload(6, filename, "jfif")
        with pytest.raises(JobFailedError, match="large: UnsupportedImageError") as failure:
            await job.result(timeout=60, poll_delay=0.02)
        info = await job.result_info()
    assert info is not None and info.job_try == 1  # permanent: not retried
    assert failure.value.error_type == "UnsupportedImageError"
    assert "medium: UnsupportedImageError" in failure.value.message
    [letter] = await letters(client).list()
    assert letter.tries == 1 and "large: UnsupportedImageError" in letter.message
    thumb = pyvips.Image.new_from_file(str(settings.storage_path / "thumbs" / f"{filename}.webp"))
    assert (thumb.width, thumb.height, thumb.avg() > 0) == (500, 333, True)
    assert await follow_ups(client, Queue.DB) == [{"image_id": 6, "medium": 0, "large": 0}]


def job_events(log: Path) -> list[dict[str, Any]]:
    """The job_* events among a worker's JSON log lines."""
    events = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if str(event.get("event", "")).startswith("job_"):
                events.append(event)
    return events


async def test_job_events_are_json_lines_with_job_queue_try_image_and_error(
    settings: Settings, client: FleetClient, tmp_path: Path
) -> None:
    settings = settings.replace(max_tries=2, log_format="json")
    root = settings.storage_path
    small = images.jpeg(root, "2025-12-01-1.jpg", 400, 300)
    big = images.jpeg(root, "2025-12-01-2.jpg", 3000, 2000)
    (root / "large").write_text("a file where the large folder should be")  # big's large: transient
    log = tmp_path / "worker.stderr"
    with log.open("wb") as stderr:
        env = {**os.environ, **settings.as_env()}
        worker = subprocess.Popen(
            [sys.executable, "-m", "fleet", "worker", "img"],
            env=env,
            stderr=stderr,
            stdout=subprocess.DEVNULL,
        )
    try:
        await wait_healthy(client, Queue.IMG)
        done = await client.render_upload(1, *small)
        transient = await client.render_upload(2, *big)
        permanent = await client.render_upload(3, "never-uploaded", "jpg")
        assert (await done.result(timeout=60, poll_delay=0.02))["ok"] is True
        for job in (transient, permanent):
            with pytest.raises(JobFailedError):
                await job.result(timeout=60, poll_delay=0.02)

        async def all_logged() -> bool:
            return sum(e["event"] == "job_dead_lettered" for e in job_events(log)) >= 2

        await wait_for(all_logged, 30)
    finally:
        worker.terminate()
        worker.wait(30)
    events = job_events(log)
    by_job: dict[str, list[tuple[str, int]]] = {}
    for event in events:
        assert (event["job"], event["queue"]) == ("render_upload", "img"), event
        assert isinstance(event["timestamp"], str) and event["level"] in ("info", "warning", "error")
        by_job.setdefault(event["job_id"], []).append((event["event"], event["try"]))
        if event["event"] != "job_started":
            assert isinstance(event["duration_ms"], int | float) and event["duration_ms"] >= 0, event
    assert by_job == {
        done.job_id: [("job_started", 1), ("job_finished", 1)],
        transient.job_id: [
            ("job_started", 1),
            ("job_retried", 1),
            ("job_started", 2),
            ("job_dead_lettered", 2),
        ],
        permanent.job_id: [("job_started", 1), ("job_dead_lettered", 1)],
    }
    image_ids = {e["job_id"]: e["image_id"] for e in events}
    assert image_ids == {done.job_id: 1, transient.job_id: 2, permanent.job_id: 3}
    failures = {(e["job_id"], e["event"]): e for e in events if "error_type" in e}
    assert set(failures) == {
        (transient.job_id, "job_retried"),
        (transient.job_id, "job_dead_lettered"),
        (permanent.job_id, "job_dead_lettered"),
    }
    retried = failures[transient.job_id, "job_retried"]
    assert retried["error_type"] == "StorageError" and "large: StorageError" in retried["error"]
    assert failures[transient.job_id, "job_dead_lettered"]["error"].startswith("gave up after 2 tries")
    assert failures[permanent.job_id, "job_dead_lettered"]["error_type"] == "MissingOriginalError"
    assert all(len(e["error"]) <= 500 and "traceback" not in e for e in failures.values())  # INFO
