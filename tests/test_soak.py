"""Soak: 2,000 uploads while a random img worker is SIGKILLed every few seconds.

Excluded from `make test`; run with `make soak`. Ends with every output present and
decodable, zero partial files, zero lost jobs, and prints its numbers as one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import signal
import statistics
import subprocess
import time
from pathlib import Path

import pytest
import pyvips

from fleet import corpus
from fleet.client import FleetClient
from fleet.deadletters import DeadLetters
from fleet.errors import JobFailedError
from fleet.keys import in_progress_key
from fleet.processes import start_worker, wait_healthy
from fleet.registry import Queue
from fleet.settings import Settings

UPLOADS = 2000
WORKERS = 3
KILL_EVERY_S = 3.0


@pytest.mark.soak
async def test_soak_uploads_survive_random_sigkills(settings: Settings) -> None:
    settings = settings.replace(img_pool_size=1, lock_ttl_s=3.0, max_tries=10)
    root = settings.storage_path
    originals = corpus.plan(100, seed=7, min_edge=300, max_edge=1400)
    corpus.generate(root, originals)
    uploads = []
    for copy in range(UPLOADS // len(originals)):
        for sample in originals:
            name = f"{sample.filename}-c{copy}"
            shutil.copyfile(
                root / "fullsize" / f"{sample.filename}.{sample.ext}",
                root / "fullsize" / f"{name}.{sample.ext}",
            )
            uploads.append((len(uploads) + 1, name, sample.ext))

    workers: list[subprocess.Popen[bytes]] = [start_worker(["img"], settings) for _ in range(WORKERS)]
    kills: list[tuple[float, set[str]]] = []  # (when, jobs in progress anywhere at that moment)
    done = asyncio.Event()

    async def killer(client: FleetClient, ours: set[str]) -> None:
        rng = random.Random(3)
        while not done.is_set():
            await asyncio.sleep(KILL_EVERY_S)
            if done.is_set():
                return
            running = {
                k.decode().rsplit(":", 1)[1] async for k in client.redis.scan_iter(in_progress_key("*"))
            }
            victim = workers.pop(rng.randrange(len(workers)))
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            kills.append((time.time(), running & ours))
            workers.append(start_worker(["img"], settings))

    try:
        async with await FleetClient.connect(settings) as client:
            await wait_healthy(client, Queue.IMG)
            started = time.monotonic()
            jobs = [await client.render_upload(*upload) for upload in uploads]
            killing = asyncio.create_task(killer(client, {job.job_id for job in jobs}))
            lost: list[str] = []
            for job in jobs:
                try:
                    await job.result(timeout=900, poll_delay=0.1)
                except (JobFailedError, TimeoutError) as exc:
                    lost.append(f"{job.job_id}: {exc!r}")
            seconds = time.monotonic() - started
            done.set()
            await killing
            infos = [await job.result_info() for job in jobs]
            dead = await DeadLetters(client.redis, settings.namespace, 3600).list()
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(60)

    retried = [
        (job, info) for job, info in zip(jobs, infos, strict=True) if info is not None and info.job_try > 1
    ]
    recoveries = []  # from the kill that interrupted a job to the start of its final run
    for job, info in retried:
        start = info.start_time.timestamp()
        interrupted = [when for when, running in kills if job.job_id in running and when < start]
        if interrupted:
            recoveries.append(start - interrupted[-1])

    missing, undecodable = [], []
    for _, name, _ext in uploads:
        for path in (root / "thumbs" / f"{name}.webp",):
            if not path.exists():
                missing.append(path.name)
                continue
            try:
                pyvips.Image.new_from_file(str(path), fail_on="error").avg()
            except pyvips.Error:
                undecodable.append(path.name)
    for folder in ("medium", "large"):
        for path in (root / folder).glob("*"):
            try:
                pyvips.Image.new_from_file(str(path), fail_on="error").avg()
            except pyvips.Error:
                undecodable.append(path.name)
    partial = [str(p) for p in root.rglob(".*.tmp")]

    summary = {
        "uploads": UPLOADS,
        "workers": WORKERS,
        "seconds": round(seconds, 1),
        "uploads_per_s": round(UPLOADS / seconds, 1),
        "kills": len(kills),
        "jobs_retried": len(retried),
        "retries": sum(info.job_try - 1 for _, info in retried),
        "recovery_s_median": round(statistics.median(recoveries), 2) if recoveries else None,
        "recovery_s_max": round(max(recoveries), 2) if recoveries else None,
        "dead_letters": len(dead),
        "lost": len(lost),
        "missing_outputs": len(missing),
        "undecodable_outputs": len(undecodable),
        "partial_files": len(partial),
        "lock_ttl_s": settings.lock_ttl_s,
    }
    print("SOAK " + json.dumps(summary))
    Path("bench-results").mkdir(exist_ok=True)
    Path("bench-results/soak.json").write_text(json.dumps(summary, indent=2) + "\n")
    assert kills, "nothing was killed: the soak proves nothing"
    assert lost == [] and dead == []
    assert missing == [] and undecodable == [] and partial == []
