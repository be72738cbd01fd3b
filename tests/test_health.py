"""Per-replica health and status, with real worker processes killed for real."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

from fleet.client import FleetClient
from fleet.deadletters import DeadLetters
from fleet.processes import start_worker, wait_healthy
from fleet.registry import RENDER_UPLOAD, Queue, RenderUpload
from fleet.settings import Settings
from imgworker.worker import worker_settings
from tests import images
from tests.conftest import running_worker


def fleet_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings.as_env()}
    return subprocess.run([sys.executable, "-m", "fleet", *args], env=env, capture_output=True, text=True)


async def test_health_fails_within_one_interval_of_a_sigkill(settings: Settings, client: FleetClient) -> None:
    settings = settings.replace(health_interval_s=1.0, img_pool_size=1)
    assert fleet_cli(settings, "health", "--queue", "img").returncode == 1  # no replica yet
    workers = [start_worker(["img"], settings) for _ in range(2)]
    try:
        await wait_healthy(client, Queue.IMG)
        deadline = time.monotonic() + 30
        while True:
            ok = fleet_cli(settings, "health", "--queue", "img")
            if ok.returncode == 0 and "live=2" in ok.stdout:
                break
            assert time.monotonic() < deadline, ok.stdout + ok.stderr
            await asyncio.sleep(0.2)
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait()
        killed = time.monotonic()
        while fleet_cli(settings, "health", "--queue", "img").returncode == 0:
            await asyncio.sleep(0.05)
        noticed_s = time.monotonic() - killed
        failed = fleet_cli(settings, "health", "--queue", "img")
        assert "live=1" in failed.stdout and "stale=" in failed.stdout
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
                worker.wait(30)
    # One interval, plus the time one `fleet health` process takes to start and answer.
    assert noticed_s < settings.health_interval_s + 1.5, noticed_s
    print(f"fleet health failed {noticed_s:.2f} s after the SIGKILL (HEALTH_INTERVAL_S=1)")


async def test_a_clean_stop_is_not_a_stale_replica(settings: Settings, client: FleetClient) -> None:
    settings = settings.replace(health_interval_s=1.0, img_pool_size=1)
    worker = start_worker(["img"], settings)
    await wait_healthy(client, Queue.IMG)
    await asyncio.sleep(0.3)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    result = fleet_cli(settings, "health", "--queue", "img")
    assert result.returncode == 1 and "live=0 stale=-" in result.stdout  # nobody serves it, nobody died


async def test_status_counts_ready_deferred_dead_and_throughput(
    settings: Settings, client: FleetClient
) -> None:
    for i in range(3):
        images.jpeg(settings.storage_path, f"s{i}.jpg", 400, 300)
    async with running_worker(worker_settings(settings)):
        jobs = [await client.render_upload(i, f"s{i}", "jpg") for i in range(3)]
        jobs.append(await client.render_upload(9, "missing", "jpg"))  # dead letter
        for job in jobs[:3]:
            await job.result(timeout=30, poll_delay=0.02)
        deadline = time.monotonic() + 30
        while not await DeadLetters(client.redis, settings.namespace, 60).list("img"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    for i in range(5):  # no worker now: queued work waits
        await client.render_upload(100 + i, "later", "jpg")
    await client.enqueue(RENDER_UPLOAD, RenderUpload(200, "tomorrow", "jpg"), defer_s=3600)
    result = fleet_cli(settings, "status", "--json")
    assert result.returncode == 0, result.stderr
    img = next(row for row in json.loads(result.stdout) if row["queue"] == "img")
    assert (img["ready"], img["deferred"], img["in_progress"], img["dead_letters"]) == (5, 1, 0, 1)
    assert img["finished_last_minute"] == 4  # three rendered, one dead-lettered
    assert img["live_replicas"] == 0
    human = fleet_cli(settings, "status")
    assert "ready" in human.stdout and "img" in human.stdout


def self_health(settings: Settings, container: str) -> subprocess.CompletedProcess[str]:
    """``fleet health --self`` as run inside ``container`` (its own runtime dir)."""
    return fleet_cli(settings.replace(runtime_dir=settings.runtime_dir / container), "health", "--self")


async def until(check: Callable[[], bool], what: str, timeout_s: float = 30) -> float:
    """Poll ``check`` until it holds; the seconds it took."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout_s, what
        await asyncio.sleep(0.1)
    return time.monotonic() - start


async def test_self_health_judges_each_container_by_its_own_workers(
    settings: Settings, client: FleetClient
) -> None:
    """Two containers (two runtime dirs), one img worker each: a SIGKILL in one leaves the
    other healthy; a wedged worker (SIGSTOP: alive, no beat) fails its own container's
    check within about one interval, while the queue-wide check still passes."""
    settings = settings.replace(health_interval_s=1.0, img_pool_size=1)
    containers = ("a", "b", "c")
    assert self_health(settings, "a").returncode == 1  # nothing registered yet
    workers = {
        c: start_worker(["img"], settings.replace(runtime_dir=settings.runtime_dir / c)) for c in containers
    }
    try:
        for c in containers:
            await until(lambda c=c: self_health(settings, c).returncode == 0, f"container {c} never healthy")
        ok = self_health(settings, "a")
        rows = {tuple(line.split()[:3]) for line in ok.stdout.splitlines()}
        replica = f"{socket.gethostname()}:{workers['a'].pid}"
        assert rows == {("img", "ok", replica), ("img-bulk", "ok", replica)}, ok.stdout  # a's own only

        workers["a"].send_signal(signal.SIGKILL)
        workers["a"].wait()
        dead = self_health(settings, "a")
        assert dead.returncode == 1 and "no live fleet worker" in dead.stdout, dead.stdout
        assert not list((settings.runtime_dir / "a").glob("*.json"))  # the dead pid's file is gone

        workers["b"].send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        await until(lambda: self_health(settings, "b").returncode == 1, "a wedged worker stayed healthy")
        noticed_s = time.monotonic() - stopped
        wedged = self_health(settings, "b")
        assert f":{workers['b'].pid} last beat" in wedged.stdout and "FAIL" in wedged.stdout, wedged.stdout
        for _ in range(3):  # the other container is unaffected, whatever happens to a and b
            other = self_health(settings, "c")
            assert other.returncode == 0, other.stdout + other.stderr
        assert fleet_cli(settings, "health", "--queue", "img").returncode == 1  # b is stale queue-wide too

        workers["b"].send_signal(signal.SIGCONT)
        await until(lambda: self_health(settings, "b").returncode == 0, "b did not recover after SIGCONT")
        assert self_health(settings, "c").returncode == 0
    finally:
        for worker in workers.values():
            if worker.poll() is None:
                worker.send_signal(signal.SIGCONT)
                worker.terminate()
                worker.wait(30)
    # One interval plus the start of one `fleet health` process (the check that saw it wedged).
    assert noticed_s < settings.health_interval_s + 1.5, noticed_s
    print(f"fleet health --self failed {noticed_s:.2f} s after the SIGSTOP (HEALTH_INTERVAL_S=1)")


async def test_self_health_covers_every_queue_of_a_light_worker_and_forgets_a_clean_stop(
    settings: Settings, client: FleetClient
) -> None:
    """One light process serves two queues: both are registered; SIGTERM removes both files."""
    settings = settings.replace(health_interval_s=1.0)
    worker = start_worker(["light"], settings)
    try:
        await until(lambda: fleet_cli(settings, "health", "--self").returncode == 0, "light never healthy")
        ok = fleet_cli(settings, "health", "--self")
        assert {line.split()[0] for line in ok.stdout.splitlines()} == {"iqdb", "db"}, ok.stdout
        only_db = fleet_cli(settings, "health", "--self", "--queue", "db")
        assert only_db.returncode == 0 and only_db.stdout.startswith("db "), only_db.stdout
    finally:
        worker.terminate()
        assert worker.wait(30) == 0
    assert not list(settings.runtime_dir.glob("*.json"))
    assert fleet_cli(settings, "health", "--self").returncode == 1
