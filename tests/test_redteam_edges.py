"""The red-team findings at fleet's edges, each reproduced for real: bulk run keys, the
``--from-dir`` feeder, Redis URLs and TLS, IQDB answers, the metrics socket, the example API."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import quote

import pytest

import fleet.bulk
from fleet import db
from fleet.bulk import BulkRun, Selection, WorkList, _pages, rethumb
from fleet.client import FleetClient
from fleet.deadletters import DeadLetters
from fleet.errors import FleetError, PermanentError, TransientError
from fleet.keys import bulk_run_prefix
from fleet.processes import wait_healthy
from fleet.registry import RENDER_BATCH, Queue, RenderBatch
from fleet.services import EmbeddedRedis, free_port
from fleet.settings import Settings
from imgworker.worker import worker_settings
from ratingworker.iqdb import IqdbClient, IqdbRejected
from tests import images
from tests.conftest import running_worker
from tests.iqdb_server import Answer, IqdbServer


async def wait_until(condition: Any, timeout_s: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


# --- 3: a bulk payload cannot make Redis allocate a bitmap as long as its id ---------------------


async def test_a_planted_render_batch_with_a_huge_id_costs_little_redis_and_run_keys_expire(
    storage: Path, tmp_path: Path
) -> None:
    images.jpeg(storage, "sparse.jpg", 300, 200)
    with EmbeddedRedis() as server:  # private: the old code made this one allocate 512 MiB
        settings = Settings(
            redis_url=server.url, storage_path=storage, namespace="huge", runtime_dir=tmp_path / "run",
            img_pool_size=1, poll_delay_s=0.02, retry_base_s=0.05, retry_cap_s=0.2, metrics_port=0,
        )  # fmt: skip
        batch = RenderBatch(
            run_id="abc", image_ids=[0], filenames=["sparse"], exts=["jpg"], variants=[], with_db=False
        )
        async with await FleetClient.connect(settings) as client, running_worker(worker_settings(settings)):
            hostile = await client.enqueue(RENDER_BATCH, dataclasses.replace(batch, image_ids=[2**32 - 1]))
            sparse = await client.enqueue(
                RENDER_BATCH, dataclasses.replace(batch, run_id="def", image_ids=[2**31 - 1])
            )
            outcome = await sparse.result(timeout=60, poll_delay=0.05)
            assert outcome["rendered"] + outcome["skipped"] == 1

            async def hostile_ended() -> bool:
                return (await hostile.status()).value == "complete"

            await wait_until(hostile_ended, what="the huge id's job to end")
            keys = [k.decode() async for k in client.redis.scan_iter(match=bulk_run_prefix("huge") + "*")]
            used = {key: await client.redis.memory_usage(key) for key in keys}
            ttls = {key: await client.redis.ttl(key) for key in keys}
            letters = await DeadLetters(client.redis, settings.namespace, settings.dead_letter_ttl_s).list()
    assert keys and sum(used.values()) < 256 << 10, used  # one 128 KiB block at most, not 256 MiB
    assert all(0 < ttl <= settings.bulk_run_ttl_s for ttl in ttls.values()), ttls
    (letter,) = letters  # the huge id: refused from the payload, with the reason
    assert "4294967295" in letter.message and "outside" in letter.message


# --- 17: the --from-dir feeder is linear, and a changed folder is never half-resumed -------------


@contextmanager
def counting_bulk_lines() -> Iterator[dict[str, int]]:
    """Count the lines of fleet/bulk.py executed (each loop turn is one), and the folder reads."""
    counts = {"lines": 0, "listings": 0}
    source = fleet.bulk.__file__

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            counts["lines"] += 1
        return local

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename == source else None

    _LISTINGS.append(counts)
    sys.settrace(tracer)
    try:
        yield counts
    finally:
        sys.settrace(None)
        _LISTINGS.remove(counts)


_LISTINGS: list[dict[str, int]] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event in ("os.listdir", "os.scandir"):
        for counts in _LISTINGS:
            counts["listings"] += 1


sys.addaudithook(_audit)


async def _walk(folder: Path, page: int) -> dict[str, int]:
    work = WorkList(Selection(from_dir=folder), None)
    seen = 0
    with counting_bulk_lines() as counts:
        assert await work.count() > 0
        async for items in _pages(work, 0, page):
            seen += len(items)
    assert seen == len(list(folder.iterdir()))
    return counts


async def test_the_folder_feeder_lists_once_and_does_linear_work(tmp_path: Path) -> None:
    counts = {}
    for n in (1500, 3000):
        folder = tmp_path / f"dir-{n}"
        folder.mkdir()
        for i in range(n):
            (folder / f"{i:05d}.jpg").write_bytes(b"x")
        counts[n] = await _walk(folder, page=32)  # the feeder's page at BULK_BATCH_SIZE=1
    assert counts[1500]["listings"] == counts[3000]["listings"] == 1
    # Linear: twice the files, about twice the work (the old feeder rescanned the listing per
    # page: four times the work, 280,000 lines for 3,000 files).
    assert counts[3000]["lines"] <= 2.2 * counts[1500]["lines"], counts
    assert counts[3000]["lines"] <= 20 * 3000, counts


async def test_resuming_a_folder_run_after_the_folder_changed_is_refused(
    settings: Settings, client: FleetClient
) -> None:
    settings = settings.replace(bulk_max_queued=8, bulk_batch_size=4)
    folder = settings.storage_path / "fullsize"
    for i in range(12):
        images.jpeg(settings.storage_path, f"f-{i:02d}.jpg", 300, 200)
    listing = Selection(from_dir=folder)
    run = BulkRun(client.redis, settings.namespace, listing.run_id(settings))
    feeding = asyncio.create_task(rethumb(client.redis, settings, listing, poll_s=0.05))  # no worker

    async def topped_up() -> bool:
        return int((await run.state()).get("fed", 0)) >= 8

    await wait_until(topped_up, what="the feeder to queue up to its bound")
    feeding.cancel()
    with pytest.raises(asyncio.CancelledError):
        await feeding
    images.jpeg(settings.storage_path, "a-new.jpg", 300, 200)  # sorts before every listed file

    with pytest.raises(FleetError, match=r"changed since run .* --force .* --missing"):
        await asyncio.wait_for(rethumb(client.redis, settings, listing, resume=True, poll_s=0.05), 30)
    async with running_worker(worker_settings(settings)):
        done = await rethumb(client.redis, settings, Selection(from_dir=folder, mode="missing"), poll_s=0.05)
    assert (done.total, done.failed) == (13, 0)
    assert (settings.storage_path / "thumbs" / "a-new.webp").exists()
    keys = [k.decode() async for k in client.redis.scan_iter(match=bulk_run_prefix(settings.namespace) + "*")]
    assert len(keys) >= 3  # two runs: their hashes and bitmap blocks
    for key in keys:  # every run key expires, refreshed while the run is active
        assert 0 < await client.redis.ttl(key) <= settings.bulk_run_ttl_s, key


# --- 11: a password with #, / or ? works raw or percent-encoded, and is never printed -------------


def fleet_status(url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": url, "ARQ_REDIS_URL": "", "NAMESPACE": "pw", "METRICS_PORT": "0"}
    command = [sys.executable, "-m", "fleet", "status"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_a_password_with_url_characters_works_and_is_never_printed() -> None:
    password = "p#ss/w?rd"
    with EmbeddedRedis(extra_args=["--requirepass", password]) as server:
        where = f"127.0.0.1:{server.port}/0"
        for url in (f"redis://:{password}@{where}", f"redis://:{quote(password, safe='')}@{where}"):
            ok = fleet_status(url)
            assert ok.returncode == 0, ok.stderr
            assert "img" in ok.stdout
        wrong = fleet_status(f"redis://:n0t#th3/r?ght@{where}")
    said = wrong.stdout + wrong.stderr
    assert wrong.returncode != 0 and "Traceback" not in said, said
    assert f"redis://***@{where}" in said, said
    for part in ("n0t", "th3", "r?ght", "ght"):
        assert part not in said, said


# --- 12: IQDB answers are read within a cap, cut short in errors, and 3xx is not success ----------

JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 100


async def _add(iqdb: IqdbServer, *answers: Answer) -> PermanentError | TransientError | str:
    iqdb.state.answer_next.extend(answers)
    client = IqdbClient(iqdb.url, timeout_s=30)
    try:
        return await client.add(7, JPEG)
    except (PermanentError, TransientError) as exc:
        return exc
    finally:
        await client.aclose()


async def test_a_huge_iqdb_error_is_cut_short() -> None:
    with IqdbServer() as iqdb:
        failed = await _add(iqdb, Answer(500, b'{"error": "' + b"E" * (20 << 20) + b'"}'))  # 20 MiB
    assert isinstance(failed, TransientError) and len(str(failed)) < 400, str(failed)[:500]


async def test_a_huge_iqdb_answer_is_not_read_whole() -> None:
    with IqdbServer() as iqdb:
        declared = Answer(200, b'{"hash": "' + b"a" * (1 << 20), repeat=100)
        endless = Answer(200, b"a" * (1 << 20), repeat=100, declare_length=False)  # ends at close
        too_big = [await _add(iqdb, answer) for answer in (declared, endless)]
    for failed in too_big:
        assert isinstance(failed, TransientError) and "over 65536 bytes" in str(failed), str(failed)[:500]
    assert declared.sent < 32 << 20 and endless.sent < 32 << 20, (declared.sent, endless.sent)  # of 100 MiB


async def test_an_iqdb_redirect_is_an_error_and_not_followed() -> None:
    with IqdbServer() as iqdb:
        moved = Answer(302, b'{"hash": "iqdb_moved"}', headers={"Location": f"{iqdb.url}/elsewhere"})
        failed = await _add(iqdb, moved)
        assert [r.path for r in iqdb.state.requests] == ["/images/7"]  # nothing followed
    assert isinstance(failed, IqdbRejected) and failed.status == 302 and "302" in str(failed), failed


@pytest.mark.parametrize("digest", ["h" * 5000, "iqdb_\x00\x1b[31m", ""])
async def test_an_implausible_iqdb_hash_is_refused(digest: str) -> None:
    with IqdbServer() as iqdb:
        failed = await _add(iqdb, Answer(200, json.dumps({"hash": digest}).encode()))
    assert isinstance(failed, PermanentError) and "hash" in str(failed) and len(str(failed)) < 400, failed


# --- 16: a worker's /metrics listens on loopback unless told otherwise ----------------------------


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a TCP socket listening on ``port`` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


async def test_a_worker_serves_metrics_on_loopback_by_default(
    settings: Settings, client: FleetClient, tmp_path: Path
) -> None:
    port = free_port()
    settings = settings.replace(
        metrics_port=port, database_url=f"sqlite+aiosqlite:///{tmp_path / 'board.sqlite3'}"
    )
    engine = db.create_engine(settings)
    await db.create_schema(engine)
    await engine.dispose()
    env = {**os.environ, **settings.as_env()}
    env.pop("METRICS_HOST")  # the default, as an operator who never heard of it has it
    worker = subprocess.Popen([sys.executable, "-m", "fleet", "worker", "db"], env=env)
    try:
        await wait_healthy(client, Queue.DB)

        async def listening() -> bool:
            return bool(listening_addresses(port))

        await wait_until(listening, what="/metrics to listen")
        assert listening_addresses(port) == {"127.0.0.1"}
    finally:
        worker.terminate()
        worker.wait(30)
