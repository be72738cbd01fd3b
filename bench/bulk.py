"""Bulk re-rendering and upload latency, measured side by side in one run.

    uv run python -m bench.bulk [--images N] [--uploads N]

1. The same originals rendered (a) directly through a render pool of the img worker's size,
   (b) through the fleet: ``rethumb`` feeding the img-bulk queue of a real worker process.
   Reports images/s of both and ``efficiency`` = fleet / direct.
2. Upload latency (queueing to result) idle, then while a bulk run saturates the same worker:
   p50/p95 of both and the p95 ratio (the target: within 2x).
Absolute times are printed; only ratios mean anything on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.img import board_with_uploads, direct_seconds, percentiles
from fleet import corpus
from fleet.bulk import Selection, rethumb
from fleet.client import FleetClient
from fleet.processes import wait_healthy, worker_process
from fleet.registry import Queue
from fleet.services import EmbeddedRedis
from fleet.settings import Settings


async def upload_latencies(client: FleetClient, name: tuple[str, str], count: int, first: int) -> list[float]:
    latencies = []
    for i in range(count):
        started = time.perf_counter()
        job = await client.render_upload(900_000 + first + i, *name)  # ids from board_with_uploads
        await job.result(timeout=120, poll_delay=0.005)
        latencies.append(time.perf_counter() - started)
    return latencies


async def main(images: int, uploads: int) -> dict[str, Any]:
    with EmbeddedRedis() as redis, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = Settings(redis_url=redis.url, storage_path=root, database_url=f"sqlite+aiosqlite:///{root}/b.db",
                            log_level="WARNING", namespace="bench")  # fmt: skip
        samples = corpus.plan(images, seed=11, min_edge=400, max_edge=1600)
        corpus.generate(root, samples)
        upload = corpus.Sample(900_000, "2025-06-01-upload", "jpg", "jpeg", 1600, 1200, 5)
        engine = await board_with_uploads(settings, samples, upload, 2 * uploads)

        direct_per_s = len(samples) / await direct_seconds(settings, samples)
        with worker_process(["img"], settings), worker_process(["light"], settings):
            async with await FleetClient.connect(settings) as client:
                for queue in (Queue.IMG, Queue.IMG_BULK, Queue.DB):
                    await wait_healthy(client, queue)
                run = await rethumb(
                    client.redis, settings, Selection(), engine=engine, force=True, poll_s=0.02
                )
                fleet_per_s = run.total / run.seconds

                idle = await upload_latencies(client, (upload.filename, upload.ext), uploads, 0)
                bulk = asyncio.create_task(
                    rethumb(client.redis, settings, Selection(mode="all", reindex="never"), engine=engine,
                            force=True, poll_s=0.05)
                )  # fmt: skip
                await asyncio.sleep(1.0)  # let the bulk run saturate the pool
                busy = await upload_latencies(client, (upload.filename, upload.ext), uploads, uploads)
                await bulk
        await engine.dispose()
    return {
        "images": images,
        "processes": settings.pool_size,
        "direct_images_per_s": round(direct_per_s, 1),
        "fleet_bulk_images_per_s": round(fleet_per_s, 1),
        "efficiency": round(fleet_per_s / direct_per_s, 3),
        "upload_idle_ms": percentiles(idle),
        "upload_during_bulk_ms": percentiles(busy),
        "upload_p95_ratio": round(percentiles(busy)["p95"] / percentiles(idle)["p95"], 2),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--uploads", type=int, default=40)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.images, args.uploads))))
