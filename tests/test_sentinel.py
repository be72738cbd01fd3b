"""Redis Sentinel: a ``redis+sentinel://`` URL, and a real failover mid-batch.

The group runs on loopback, started here: a primary, a replica (``--replicaof``) and three
sentinels (quorum 2) with a short ``down-after-milliseconds``, so a SIGKILLed primary is
replaced within seconds and the workers find the new one through the sentinels.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pyvips
import redis
from arq.jobs import JobResult
from redis.exceptions import RedisError

from fleet.client import FleetClient
from fleet.connections import redis_settings
from fleet.registry import RENDER_UPLOAD, RenderUpload
from fleet.services import EmbeddedRedis, find_redis_server, free_port
from fleet.settings import Settings, SettingsError, masked_url, parse_sentinel_url
from imgworker.worker import worker_settings
from tests import images
from tests.conftest import running_worker

MASTER = "mymaster"
T = TypeVar("T")


# --- the URL ------------------------------------------------------------------------------------


def test_sentinel_url_is_read_checked_and_masked() -> None:
    url = "redis+sentinel://:p@ss#1@10.0.0.1:26379,10.0.0.2,sentinel-3:26380/mymaster/1"
    settings = Settings(redis_url=url)
    found = parse_sentinel_url(url)
    assert found.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("sentinel-3", 26380))
    assert (found.master, found.database) == ("mymaster", 1)
    assert masked_url(url) == "redis+sentinel://***@10.0.0.1:26379,10.0.0.2,sentinel-3:26380/mymaster/1"
    rs = redis_settings(settings)
    assert rs.sentinel and rs.sentinel_master == "mymaster" and rs.database == 1
    assert rs.host == [("10.0.0.1", 26379), ("10.0.0.2", 26379), ("sentinel-3", 26380)]
    assert rs.password == "p@ss#1"
    assert parse_sentinel_url("redis+sentinel://h/m").database == 0


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+sentinel://h1:26379,h2:26379", "no primary's name"),
        ("redis+sentinel://h1:port/mymaster", "sentinel 'h1:port' is not host"),
        ("redis+sentinel://h1/mymaster/zero", "database 'zero' is not a number"),
        ("redis+sentinel://:s3cret@,h2/mymaster", "sentinel '' is not host"),
    ],
)
def test_a_bad_sentinel_url_is_refused_with_the_password_masked(url: str, why: str) -> None:
    with pytest.raises(SettingsError, match="REDIS_URL=") as refused:
        Settings.from_env({"REDIS_URL": url})
    assert why in str(refused.value)
    assert "s3cret" not in str(refused.value)


# --- a real sentinel group ----------------------------------------------------------------------


@dataclass
class SentinelGroup:
    """A primary, its replica and three sentinels watching them, all on loopback."""

    workdir: Path
    primary: EmbeddedRedis = field(init=False)
    replica: EmbeddedRedis = field(init=False)
    sentinel_ports: list[int] = field(default_factory=list)
    sentinels: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def url(self, db: int = 0) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{MASTER}/{db}"

    def start(self) -> SentinelGroup:
        self.primary = EmbeddedRedis().start()
        self.replica = EmbeddedRedis(extra_args=["--replicaof", "127.0.0.1", str(self.primary.port)]).start()
        for i in range(3):
            self.sentinels.append(self._start_sentinel(i))
        wait_for(self._watched, 30, "the sentinels to see the replica and each other")
        return self

    def _start_sentinel(self, i: int) -> subprocess.Popen[bytes]:
        port = free_port()
        self.sentinel_ports.append(port)
        home = self.workdir / f"sentinel-{i}"
        home.mkdir(parents=True)
        conf = home / "sentinel.conf"  # sentinel rewrites its config: it must be a writable file
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {home}\ndaemonize no\nloglevel warning\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {self.primary.port} 2\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\n"
            f"sentinel failover-timeout {MASTER} 3000\n"
        )
        return subprocess.Popen(
            [find_redis_server(), str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _ask(self, port: int, *command: str) -> Any:
        with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as conn:
            return conn.execute_command(*command)

    def _watched(self) -> bool:
        """Every sentinel knows the replica and the two other sentinels (so a failover can be
        agreed), and the replica is in sync with the primary."""
        try:
            link = self._ask(self.replica.port, "INFO", "replication")["master_link_status"]
            for port in self.sentinel_ports:
                with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as conn:
                    master = conn.sentinel_master(MASTER)
                if int(master["num-other-sentinels"]) < 2 or int(master["num-slaves"]) < 1:
                    return False
        except (RedisError, KeyError):
            return False
        return bool(link == "up")

    def primary_port(self) -> int | None:
        """The primary the sentinels name now (None while none answers)."""
        for port in self.sentinel_ports:
            with contextlib.suppress(RedisError):
                return int(self._ask(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)[1])
        return None

    def stop(self) -> None:
        for process in self.sentinels:
            process.terminate()
        for process in self.sentinels:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.replica.stop()
        self.primary.stop()


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    group = SentinelGroup(tmp_path / "sentinels")
    try:
        yield group.start()
    finally:
        group.stop()


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


async def through_failover(call: Callable[[], Awaitable[T]], timeout_s: float = 60) -> T:
    """``call()``, tried again while Redis is away: the first command on a connection to the
    dead primary fails, the next connection asks the sentinels for the new one."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await call()
        except (RedisError, OSError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


# --- the failover -------------------------------------------------------------------------------

BATCH = 24


async def test_a_failover_mid_batch_loses_no_job_and_the_worker_follows_the_new_primary(
    sentinel_group: SentinelGroup, storage: Path, tmp_path: Path
) -> None:
    settings = Settings(
        redis_url=sentinel_group.url(),
        storage_path=storage,
        namespace=f"sentinel-{uuid.uuid4().hex[:8]}",
        runtime_dir=tmp_path / "run",
        img_pool_size=2,
        lock_ttl_s=3.0,  # a job cut off by the failover runs again after this long
        retry_base_s=0.05,
        retry_cap_s=0.2,
        metrics_port=0,
    )
    names = [
        images.jpeg(storage, f"s{i}.jpg", 1500 if i % 4 == 0 else 900, 1100 if i % 4 == 0 else 700)
        for i in range(BATCH)
    ]
    job_ids = [f"sentinel-render-{i}" for i in range(BATCH)]
    lazy = FleetClient.create(settings)  # the API's client: a lazy sentinel pool
    async with await FleetClient.connect(settings) as client, running_worker(worker_settings(settings)):
        for i, (name, job_id) in enumerate(zip(names, job_ids, strict=True)):
            await lazy.enqueue(
                RENDER_UPLOAD, RenderUpload(image_id=i, filename=name[0], ext=name[1]), job_id=job_id
            )
        wait_ready = time.monotonic() + 120
        while len(list((storage / "thumbs").glob("*.webp"))) < 4:
            assert time.monotonic() < wait_ready, "no render finished before the failover"
            await asyncio.sleep(0.02)
        old_port = sentinel_group.primary.port
        killed_at = time.monotonic()
        sentinel_group.primary.kill()  # SIGKILL, mid-batch
        done_before = len(list((storage / "thumbs").glob("*.webp")))
        await asyncio.to_thread(
            wait_for, lambda: sentinel_group.primary_port() == sentinel_group.replica.port, 60, "a promotion"
        )
        promoted_s = time.monotonic() - killed_at
        assert sentinel_group.primary_port() != old_port

        re_enqueued = await requeue_lost(lazy, names, job_ids)
        results = [await wait_result(client, job_id) for job_id in job_ids]
        await lazy.close()
    assert all(r.success and r.result["ok"] is True for r in results), [r.result for r in results]
    assert done_before < BATCH, "the batch was over before the primary was killed"
    retried = sum(1 for r in results if r.job_try > 1)
    print(
        f"\nfailover: {done_before}/{BATCH} rendered at SIGKILL; promotion {promoted_s:.1f} s after it; "
        f"{retried}/{BATCH} jobs ran again "
        f"(job_try > 1); {re_enqueued} lost in replication and queued again"
    )
    outputs = decoded_outputs(storage, names)
    assert await rendered_again(settings, names) == outputs, "a render run twice gave other bytes"


async def requeue_lost(client: FleetClient, names: list[tuple[str, str]], job_ids: list[str]) -> int:
    """Queue again, under the same id, every job the new primary never heard of (acknowledged
    by the old one but not yet replicated): the client's side of asynchronous replication."""
    lost = 0
    for i, ((filename, ext), job_id) in enumerate(zip(names, job_ids, strict=True)):
        job = await through_failover(lambda j=job_id: client.job(j))
        status = await through_failover(job.status)
        if status.value == "not_found":
            lost += 1
            payload = RenderUpload(image_id=i, filename=filename, ext=ext)
            await through_failover(lambda p=payload, j=job_id: client.enqueue(RENDER_UPLOAD, p, job_id=j))
    return lost


async def wait_result(client: FleetClient, job_id: str, timeout_s: float = 180) -> JobResult:
    job = await through_failover(lambda: client.job(job_id))
    deadline = time.monotonic() + timeout_s
    while True:
        info = await through_failover(job.result_info)
        if info is not None:
            return info
        assert time.monotonic() < deadline, f"job {job_id} never finished"
        await asyncio.sleep(0.05)


def decoded_outputs(storage: Path, names: list[tuple[str, str]]) -> dict[str, bytes]:
    """Every rendered file's bytes, each one checked to decode whole."""
    outputs: dict[str, bytes] = {}
    for folder in ("thumbs", "medium", "large"):
        for path in sorted((storage / folder).glob("*")):
            image = pyvips.Image.new_from_file(str(path), fail_on="error")
            assert image.avg() > 0
            outputs[f"{folder}/{path.name}"] = path.read_bytes()
    thumbs = {f"thumbs/{name}.webp" for name, _ in names}
    assert thumbs <= outputs.keys(), f"thumbnails missing: {sorted(thumbs - outputs.keys())}"
    assert sum(key.startswith("medium/") for key in outputs) == len(names[::4])
    assert not list(storage.rglob(".*.tmp"))
    return outputs


async def rendered_again(settings: Settings, names: list[tuple[str, str]]) -> dict[str, bytes]:
    """The same renders once more on the new primary, outputs removed first: a job that ran
    twice during the failover must have written what a single clean run writes."""
    for folder in ("thumbs", "medium", "large"):
        for path in (settings.storage_path / folder).glob("*"):
            path.unlink()
    async with await FleetClient.connect(settings) as client, running_worker(worker_settings(settings)):
        jobs = [await client.render_upload(i, *name) for i, name in enumerate(names)]
        for job in jobs:
            assert (await job.result(timeout=180, poll_delay=0.05))["ok"] is True
    return decoded_outputs(settings.storage_path, names)
