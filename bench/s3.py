"""Renders/s with originals and outputs in a bucket against the same renders on a local folder.

The bucket is moto's standalone S3 server on loopback (a dev dependency: without it the measure
is skipped), so the figure is the cost of the S3 protocol itself (signing, one GET per render,
a HEAD and a PUT per output), not of a network. Both sides run on the same warm-up, pool size
and corpus, interleaved round by round, each keeping its best round."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.img import best_rounds
from fleet import corpus
from fleet.board import Folder
from fleet.objects import BucketConfig, open_bucket
from fleet.services import free_port
from fleet.settings import Settings
from imgworker.backend import ProcessPoolBackend
from imgworker.config import render_options
from imgworker.render import RenderRequest
from imgworker.render.storage import LocalStore, ObjectStore, Store


@contextlib.contextmanager
def moto_server(**env: str) -> Iterator[str]:
    """moto's S3 server on a free loopback port; yields its endpoint."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **env},
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(f"{endpoint}/moto-api/", timeout=1)
            break
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError("moto server did not start")
        time.sleep(0.05)
    try:
        yield endpoint
    finally:
        server.terminate()
        server.wait(10)


def new_bucket(endpoint: str, name: str) -> ObjectStore:
    """An empty bucket on a moto server (which takes any credentials)."""
    httpx.put(f"{endpoint}/{name}", timeout=5).raise_for_status()
    return ObjectStore(
        BucketConfig(name, endpoint, "us-east-1", access_key_id="test", secret_access_key="test")
    )


def upload_originals(root: Path, bucket: ObjectStore, samples: list[corpus.Sample]) -> None:
    """The corpus's originals, under fullsize/ in the bucket as on disk."""
    import obstore

    client = open_bucket(bucket.config)
    for s in samples:
        key = f"{Folder.ORIGINALS}/{s.filename}.{s.ext}"
        obstore.put(client, key, (root / key).read_bytes(), use_multipart=False)


async def seconds(store: Store, settings: Settings, samples: list[corpus.Sample]) -> float:
    """Wall time of every sample rendered on a warm pool of the img worker's size."""
    backend = ProcessPoolBackend(store, render_options(settings), settings.pool_size)
    try:
        await backend.warm_up()
        started = time.perf_counter()
        results = await backend.render_batch([RenderRequest(s.image_id, s.filename, s.ext) for s in samples])
        elapsed = time.perf_counter() - started
    finally:
        await backend.close()
    failed = [r.error for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} renders failed, e.g. {failed[0]}")
    return elapsed


async def main(root: Path, samples: list[corpus.Sample], settings: Settings, rounds: int) -> dict[str, Any]:
    """Local folder and bucket, alternating for ``rounds``, best round of each kept."""
    if importlib.util.find_spec("moto") is None:
        return {"skipped": "moto not installed (a dev dependency)"}
    local: list[float] = []
    bucket: list[float] = []
    with moto_server() as endpoint:
        store = new_bucket(endpoint, "fleet-bench")
        upload_originals(root, store, samples)
        for _ in range(rounds):
            local.append(await seconds(LocalStore(root), settings, samples))
            bucket.append(await seconds(store, settings, samples))
    return best_rounds(len(samples), settings.pool_size, ("local", local), ("s3", bucket), "s3_ratio")
