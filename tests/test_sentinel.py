"""Redis Sentinel: a ``redis+sentinel://`` URL, and a real failover mid-batch.

The group runs on loopback, started here: a primary, a replica (``--replicaof``) and three
sentinels (quorum 2) with a short ``down-after-milliseconds``, so a SIGKILLed primary is
replaced within seconds and the workers find the new one through the sentinels.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pyvips
import redis
from arq.jobs import JobResult
from redis.exceptions import RedisError

from fleet import wake
from fleet.client import FleetClient
from fleet.connections import connect, redis_settings, worker_redis_settings
from fleet.errors import EnqueueError
from fleet.keys import job_key, queue_key, wake_key
from fleet.registry import RENDER_UPLOAD, Queue, RenderUpload
from fleet.services import EmbeddedRedis, find_redis_server, free_port
from fleet.settings import Settings, SettingsError, masked_url, parse_sentinel_url
from imgworker.worker import worker_settings
from tests import images
from tests.support import running_worker, wait_for
from tests.test_bulk import counting

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


async def test_an_enqueue_is_idempotent_by_job_id(client: FleetClient, settings: Settings) -> None:
    """Queueing again under an id already queued (an enqueue that failed unconfirmed, retried)
    returns that job and queues nothing: what makes retrying an enqueue safe."""
    job_id = f"upload-{uuid.uuid4().hex}"  # arq's job keys are not namespaced: one of its own
    first = await client.enqueue(RENDER_UPLOAD, RenderUpload(1, "2025-01-01-1", "png"), job_id=job_id)
    again = await client.enqueue(RENDER_UPLOAD, RenderUpload(2, "2025-01-01-2", "png"), job_id=job_id)
    assert again.job_id == first.job_id == job_id
    assert await client.redis.zcard(queue_key(settings.namespace, Queue.IMG)) == 1
    info = await again.info()
    assert info is not None and info.args[0]["image_id"] == 1  # the first payload, kept


# --- a real sentinel group ----------------------------------------------------------------------


class StallableLink:
    """A TCP relay in front of the primary: the sentinels know the primary by its address, so
    every client, worker and replica reaches it through here. Stalled, it holds what the
    primary sends its replicas (the connections that asked for PSYNC) instead of passing it
    on, as a congested link would: writes the primary acknowledges then are on no replica,
    and are gone if it dies (asynchronous replication's window, too short to hit on loopback
    otherwise). Everything else passes."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.stalled = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                peer, _ = self.server.accept()
            except OSError:  # closed
                return
            try:
                primary = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:  # the primary is dead: so is its address
                peer.close()
                continue
            replica = threading.Event()  # set once the peer asks for the replication stream
            threading.Thread(target=self._relay, args=(peer, primary, replica, None), daemon=True).start()
            threading.Thread(target=self._relay, args=(primary, peer, None, replica), daemon=True).start()

    def _relay(
        self,
        source: socket.socket,
        to: socket.socket,
        marks: threading.Event | None,
        held: threading.Event | None,
    ) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if marks is not None and b"PSYNC" in data:
                    marks.set()
                if held is None or not (held.is_set() and self.stalled.is_set()):
                    to.sendall(data)
        for end in (to, source):  # both ends closed (a shutdown wakes the other direction's recv)
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def close(self) -> None:
        self.server.close()


@dataclass
class SentinelGroup:
    """A primary, two replicas and three sentinels watching them, all on loopback. Two
    replicas: after a failover the promoted one still has a replica to confirm enqueues."""

    workdir: Path
    primary: EmbeddedRedis = field(init=False)
    link: StallableLink = field(init=False)
    """What the primary sends its replicas passes through here."""
    replicas: list[EmbeddedRedis] = field(default_factory=list)
    sentinel_ports: list[int] = field(default_factory=list)
    sentinels: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def url(self, db: int = 0) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{MASTER}/{db}"

    async def start(self) -> SentinelGroup:
        self.primary = EmbeddedRedis().start()
        self.link = StallableLink(self.primary.port)
        for _ in range(2):
            follow = ["--replicaof", "127.0.0.1", str(self.link.port)]
            self.replicas.append(EmbeddedRedis(extra_args=follow).start())
        for i in range(3):
            self.sentinels.append(self._start_sentinel(i))
        await wait_for(self._watched, what="the sentinels to see the replicas and each other", timeout=30)
        return self

    def _start_sentinel(self, i: int) -> subprocess.Popen[bytes]:
        port = free_port()
        self.sentinel_ports.append(port)
        home = self.workdir / f"sentinel-{i}"
        home.mkdir(parents=True)
        conf = home / "sentinel.conf"  # sentinel rewrites its config: it must be a writable file
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {home}\ndaemonize no\nloglevel warning\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {self.link.port} 2\n"
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
        """Every sentinel knows both replicas and the two other sentinels (so a failover can be
        agreed), and the replicas are in sync with the primary."""
        try:
            for replica in self.replicas:
                if self._ask(replica.port, "INFO", "replication")["master_link_status"] != "up":
                    return False
            for port in self.sentinel_ports:
                with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as conn:
                    master = conn.sentinel_master(MASTER)
                if int(master["num-other-sentinels"]) < 2 or int(master["num-slaves"]) < 2:
                    return False
        except (RedisError, KeyError):
            return False
        return True

    def primary_holds(self, key: str) -> bool:
        """Whether the primary itself (not through the link) holds ``key``."""
        with redis.Redis(port=self.primary.port) as primary:
            return bool(primary.exists(key))

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
        for replica in self.replicas:
            replica.stop()
        self.primary.stop()
        self.link.close()


@pytest.fixture
async def sentinel_group(tmp_path: Path) -> AsyncIterator[SentinelGroup]:
    group = SentinelGroup(tmp_path / "sentinels")
    try:
        yield await group.start()
    finally:
        group.stop()


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
            await asyncio.sleep(0.1)  # paces the retries of a failing call; nothing waits on time


# --- the failover -------------------------------------------------------------------------------

BATCH = 24


async def test_a_failover_mid_batch_loses_no_acknowledged_job_and_each_ends_once_correct(
    sentinel_group: SentinelGroup, storage: Path, tmp_path: Path
) -> None:
    """The primary SIGKILLed mid-batch, while jobs are being queued and its replicas get
    nothing (the link to them stalled): every enqueue that returned is on the promoted replica
    (ENQUEUE_REPLICAS=1: each waits for a replica to hold it, and one that fails is queued
    again under the same id); every job ends with one successful result, its outputs the
    bytes of a clean run; a worker's command cut off by the failover goes through on the
    promoted replica."""
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
    uploads = [
        (f"sentinel-render-{i}", RenderUpload(image_id=i, filename=f, ext=e))
        for i, (f, e) in enumerate(names)
    ]
    renders: collections.Counter[int] = collections.Counter()
    lazy = FleetClient.create(settings)  # the API's client: a lazy sentinel pool
    async with (
        await FleetClient.connect(settings) as client,
        running_worker(counting(worker_settings(settings), renders)),
    ):
        first = BATCH // 2
        assert await queue_until_held(lazy, uploads[:first]) == 0
        thumbs = storage / "thumbs"
        await wait_for(
            lambda: len(list(thumbs.glob("*.webp"))) >= 4, what="4 renders before the failover", timeout=120
        )
        worker_pool = await connect(worker_redis_settings(settings))  # a worker's connections
        old_port = sentinel_group.link.port  # the primary's address, as the sentinels give it
        sentinel_group.link.stalled.set()  # the replicas get nothing more...
        queueing = asyncio.create_task(queue_until_held(lazy, uploads[first:]))
        stalled_job = job_key(uploads[first][0])
        await wait_for(
            lambda: asyncio.to_thread(sentinel_group.primary_holds, stalled_job),
            what="an enqueue the primary acknowledges and no replica gets",
            timeout=60,
        )
        killed_at = time.monotonic()
        sentinel_group.primary.kill()  # SIGKILL, mid-batch
        done_before = len(list((storage / "thumbs").glob("*.webp")))
        queue = queue_key(settings.namespace, Queue.IMG)
        await wake.nudge(worker_pool, queue)  # a worker's write cut off by the failover: retried, not raised
        await wait_for(
            lambda: asyncio.to_thread(sentinel_group.primary_port),
            what="a promotion",
            until=lambda port: port not in (None, old_port),
            timeout=60,
        )
        promoted_s = time.monotonic() - killed_at
        failed_enqueues = await queueing
        assert await worker_pool.llen(wake_key(queue)) >= 1  # on the promoted replica
        await worker_pool.aclose()
        unknown = [j for j, _ in uploads if (await through_failover(job_status(client, j))) == "not_found"]
        assert unknown == [], f"acknowledged, then lost in the failover: {unknown}"
        results = [await wait_result(client, job_id) for job_id, _ in uploads]
        await lazy.close()
    assert all(r.success and r.result["ok"] is True for r in results), [r.result for r in results]
    assert done_before < BATCH, "the batch was over before the primary was killed"
    twice = sorted(image_id for image_id, n in renders.items() if n > 1)
    print(
        f"\nfailover: {done_before}/{BATCH} rendered at SIGKILL; promotion {promoted_s:.1f} s after it; "
        f"{failed_enqueues} enqueues failed (unconfirmed) and were queued again under their id; "
        f"{len(twice)}/{BATCH} jobs ran twice (their start or finish was cut off), none lost"
    )
    outputs = decoded_outputs(storage, names)
    assert await rendered_again(settings, names) == outputs, "a render run twice gave other bytes"


async def queue_until_held(client: FleetClient, uploads: list[tuple[str, RenderUpload]]) -> int:
    """Queue each upload under its id until the enqueue returns (a replica holds it), again
    after each EnqueueError: what an API does that must not lose one. Returns the failures."""
    failures = 0
    deadline = time.monotonic() + 90
    for job_id, upload in uploads:
        while True:
            try:
                await client.enqueue(RENDER_UPLOAD, upload, job_id=job_id)
                break
            except EnqueueError:
                failures += 1
                assert time.monotonic() < deadline, f"{job_id} could not be queued"
                await asyncio.sleep(0.1)  # paces the API's retries; nothing waits on time
    return failures


def job_status(client: FleetClient, job_id: str) -> Callable[[], Awaitable[str]]:
    async def status() -> str:
        return str((await (await client.job(job_id)).status()).value)

    return status


async def wait_result(client: FleetClient, job_id: str, timeout_s: float = 180) -> JobResult:
    job = await through_failover(lambda: client.job(job_id))
    info: JobResult = await wait_for(
        lambda: through_failover(job.result_info), what=f"job {job_id}'s result", timeout=timeout_s
    )
    return info


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
