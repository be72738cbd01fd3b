"""Per-replica health and status, with real worker processes killed for real."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import time

from fleet.client import FleetClient
from fleet.deadletters import DeadLetters
from fleet.processes import wait_healthy, worker_process
from fleet.registry import RENDER_UPLOAD, Queue, RenderUpload
from fleet.settings import Settings
from imgworker.worker import worker_settings
from tests import images
from tests.support import fleet_cli, running_worker, wait_for


def health(settings: Settings) -> subprocess.CompletedProcess[str]:
    """``fleet health --queue img``."""
    return fleet_cli(settings, "health", "--queue", "img")


async def test_health_fails_within_one_interval_of_a_sigkill(settings: Settings, client: FleetClient) -> None:
    settings = settings.replace(health_interval_s=1.0, img_pool_size=1)
    assert health(settings).returncode == 1  # no replica yet
    with worker_process(["img"], settings) as victim, worker_process(["img"], settings):
        await wait_healthy(client, Queue.IMG)
        await wait_for(
            lambda: health(settings),
            until=lambda ok: ok.returncode == 0 and "live=2" in ok.stdout,
            what="two live img replicas",
        )
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        killed = time.monotonic()
        await wait_for(lambda: health(settings).returncode, what="fleet health to fail")
        noticed_s = time.monotonic() - killed
        failed = health(settings)
        assert "live=1" in failed.stdout and "stale=" in failed.stdout
    # One interval, plus the time one `fleet health` process takes to start and answer.
    assert noticed_s < settings.health_interval_s + 1.5, noticed_s
    print(f"fleet health failed {noticed_s:.2f} s after the SIGKILL (HEALTH_INTERVAL_S=1)")


async def test_a_clean_stop_is_not_a_stale_replica(settings: Settings, client: FleetClient) -> None:
    settings = settings.replace(health_interval_s=1.0, img_pool_size=1)
    with worker_process(["img"], settings) as worker:
        # Registered as a live replica first: a stop before that would prove nothing.
        await wait_for(lambda: "live=1" in health(settings).stdout, what="a live img replica")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    result = health(settings)
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
        letters = DeadLetters(client.redis, settings.namespace, 60)
        await wait_for(lambda: letters.list("img"), what="the missing original's dead letter")
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


async def test_self_health_judges_each_container_by_its_own_workers(
    settings: Settings, client: FleetClient
) -> None:
    """Two containers (two runtime dirs), one img worker each: a SIGKILL in one leaves the
    other healthy; a wedged worker (SIGSTOP: alive, no beat) fails its own container's
    check within about one interval, while the queue-wide check still passes."""
    settings = settings.replace(health_interval_s=1.0, img_pool_size=1)
    containers = ("a", "b", "c")
    assert self_health(settings, "a").returncode == 1  # nothing registered yet
    with contextlib.ExitStack() as stack:
        workers = {
            c: stack.enter_context(
                worker_process(["img"], settings.replace(runtime_dir=settings.runtime_dir / c))
            )
            for c in containers
        }
        for c in containers:
            await wait_for(
                lambda c=c: self_health(settings, c).returncode == 0, what=f"container {c} healthy"
            )
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
        await wait_for(
            lambda: self_health(settings, "b").returncode, what="the wedged worker's check to fail"
        )
        noticed_s = time.monotonic() - stopped
        wedged = self_health(settings, "b")
        assert f":{workers['b'].pid} last beat" in wedged.stdout and "FAIL" in wedged.stdout, wedged.stdout
        for _ in range(3):  # the other container is unaffected, whatever happens to a and b
            other = self_health(settings, "c")
            assert other.returncode == 0, other.stdout + other.stderr
        assert health(settings).returncode == 1  # b is stale queue-wide too

        workers["b"].send_signal(signal.SIGCONT)
        await wait_for(lambda: self_health(settings, "b").returncode == 0, what="b healthy after SIGCONT")
        assert self_health(settings, "c").returncode == 0
    # One interval plus the start of one `fleet health` process (the check that saw it wedged).
    assert noticed_s < settings.health_interval_s + 1.5, noticed_s
    print(f"fleet health --self failed {noticed_s:.2f} s after the SIGSTOP (HEALTH_INTERVAL_S=1)")


async def test_self_health_covers_every_queue_of_a_light_worker_and_forgets_a_clean_stop(
    settings: Settings, client: FleetClient
) -> None:
    """One light process serves two queues: both are registered; SIGTERM removes both files."""
    settings = settings.replace(health_interval_s=1.0)
    with worker_process(["light"], settings) as worker:
        ok = await wait_for(
            lambda: fleet_cli(settings, "health", "--self"),
            until=lambda done: done.returncode == 0,
            what="the light worker healthy",
        )
        assert {line.split()[0] for line in ok.stdout.splitlines()} == {"iqdb", "db"}, ok.stdout
        only_db = fleet_cli(settings, "health", "--self", "--queue", "db")
        assert only_db.returncode == 0 and only_db.stdout.startswith("db "), only_db.stdout
    assert worker.returncode == 0
    assert not list(settings.runtime_dir.glob("*.json"))
    assert fleet_cli(settings, "health", "--self").returncode == 1
