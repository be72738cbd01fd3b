"""Renders/s with originals and outputs in a bucket against the same renders on a local folder.

The bucket is moto's standalone S3 server on loopback (a dev dependency: without it the measure
is skipped), so the figure is the cost of the S3 protocol itself (signing, one GET per render,
a PUT per output, one DeleteObjects for variants not made, a HEAD before the IQDB JPEG only),
and of moto serving it on the same cores, not of a network. Both sides run on the same warm-up,
pool size and corpus, interleaved round by round, each keeping its best round."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
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


@dataclass(frozen=True)
class MotoServer:
    """moto's S3 server on loopback, its access log kept: the requests it served can be counted."""

    endpoint: str
    pid: int
    log: Path

    def requests(self, bucket: str | None = None) -> list[tuple[str, str]]:
        """(method, path) of every request served so far, in order; only ``bucket``'s if given."""
        found = [(m[1], m[2]) for m in _REQUEST.finditer(self.log.read_text(errors="replace"))]
        if bucket is None:
            return found
        return [(method, path) for method, path in found if re.match(rf"/{re.escape(bucket)}(/|\?|$)", path)]

    def cpu_s(self) -> float:
        """CPU seconds the server has used (user + system), from /proc."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_REQUEST = re.compile(r'"(?:\x1b\[[0-9;]*m)?([A-Z]+) (\S+) HTTP/')
"""A request line of werkzeug's access log (coloured by status on a terminal)."""


@contextlib.contextmanager
def moto_server(**env: str) -> Iterator[MotoServer]:
    """moto's S3 server on a free loopback port, logging each request to a temp file."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="fleet-moto-") as tmp:
        log = Path(tmp) / "access.log"
        with open(log, "wb") as out:
            server = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=out,
                stderr=out,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
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
            yield MotoServer(endpoint, server.pid, log)
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
    """Local folder and bucket, alternating for ``rounds``, best round of each kept; with the
    requests each render made and the CPU moto took to serve them, which on a machine this
    small it takes from the render processes (a real bucket's server runs elsewhere)."""
    if importlib.util.find_spec("moto") is None:
        return {"skipped": "moto not installed (a dev dependency)"}
    local: list[float] = []
    bucket: list[float] = []
    served: list[tuple[int, float]] = []  # (requests, moto CPU seconds) of each bucket round
    with moto_server() as moto:
        store = new_bucket(moto.endpoint, "fleet-bench")
        upload_originals(root, store, samples)
        for _ in range(rounds):
            local.append(await seconds(LocalStore(root), settings, samples))
            before, cpu = len(moto.requests()), moto.cpu_s()
            bucket.append(await seconds(store, settings, samples))
            served.append((len(moto.requests()) - before, moto.cpu_s() - cpu))
    measured = best_rounds(len(samples), settings.pool_size, ("local", local), ("s3", bucket), "s3_ratio")
    requests, cpu_s = served[bucket.index(min(bucket))]
    return measured | {
        "requests_per_render": round(requests / len(samples), 2),
        "moto_cpu_ms_per_request": round(1000 * cpu_s / max(1, requests), 2),
        # The share of the pool's CPU time moto used in that round: what S3 at no server cost
        # could win back at most.
        "moto_cpu_share": round(cpu_s / (min(bucket) * min(settings.pool_size, os.cpu_count() or 1)), 3),
    }
