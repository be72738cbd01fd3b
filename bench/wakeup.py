"""Idle load and enqueue→start latency of one img-layout replica (two queues), polling
(WAKE_ON_ENQUEUE=0, arq's poll every POLL_DELAY_S) against waking (WAKE_ON_ENQUEUE=1), side by
side. Real Redis (a private server per mode, so its command counts are the replica's alone),
no-op jobs.

    uv run python -m bench.wakeup [--jobs N] [--window S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from typing import Any

from arq.connections import ArqRedis

from fleet.client import FleetClient
from fleet.registry import Queue, RenderUpload, jobs_of
from fleet.services import EmbeddedRedis
from fleet.settings import Settings
from fleet.worker import Context, build_worker, close_worker, handles, make_worker

HEARTBEAT_COMMANDS = ("cmdstat_zadd", "cmdstat_hset")
"""The replica heartbeat's (fleet.health, every HEALTH_INTERVAL_S / 2): its own timer, not polling."""


def replica(settings: Settings, started: dict[int, float]) -> list[dict[str, Any]]:
    """Both img queues, as ``fleet worker img`` serves them, with no-op jobs recording their start."""

    async def noop(ctx: Context, payload: Any) -> None:
        if isinstance(payload, RenderUpload):
            started[payload.image_id] = time.perf_counter()

    return [
        build_worker(queue, [handles(spec)(noop) for spec in jobs_of(queue)], settings)
        for queue in (Queue.IMG, Queue.IMG_BULK)
    ]


async def commands(redis: ArqRedis) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {k: int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info"}


def percentile(values: list[float], q: int) -> float:
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 2) if values else 0.0


async def measure(wake_on_enqueue: bool, jobs: int, window_s: float) -> dict[str, Any]:
    started: dict[int, float] = {}
    with EmbeddedRedis() as redis:
        settings = Settings(
            redis_url=redis.url, namespace="bench", log_level="WARNING", metrics_port=0,
            wake_on_enqueue=wake_on_enqueue,
        )  # fmt: skip
        async with await FleetClient.connect(settings) as client:
            workers = [make_worker(kwargs, handle_signals=False) for kwargs in replica(settings, started)]
            tasks = [asyncio.create_task(w.async_run()) for w in workers]
            try:
                await client.render_upload(0, "warm-up", "jpg")
                while 0 not in started:
                    await asyncio.sleep(0.01)
                await asyncio.sleep(1.0)  # idle now
                before = await commands(client.redis)
                await asyncio.sleep(window_s)
                after = await commands(client.redis)
                latencies = []
                for image_id in range(1, jobs + 1):
                    await asyncio.sleep(random.uniform(0.05, 0.1))  # the replica is idle again
                    queued = time.perf_counter()
                    await client.render_upload(image_id, "x", "jpg")
                    while image_id not in started:
                        await asyncio.sleep(0.0005)
                    latencies.append((started[image_id] - queued) * 1000)
            finally:
                for worker, task in zip(workers, tasks, strict=True):
                    await close_worker(worker)
                    task.cancel()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    total = sum(delta.values())
    heartbeat = sum(delta.get(k, 0) for k in HEARTBEAT_COMMANDS)
    return {
        "mode": "wake" if wake_on_enqueue else "poll",
        "idle_commands_per_s": round(total / window_s, 2),
        "idle_commands_per_s_without_heartbeat": round((total - heartbeat) / window_s, 2),
        "idle_commands": {k.removeprefix("cmdstat_"): v for k, v in sorted(delta.items()) if v},
        "enqueue_to_start_ms_p50": percentile(latencies, 50),
        "enqueue_to_start_ms_p99": percentile(latencies, 99),
        "jobs": jobs,
        "window_s": window_s,
    }


async def main(jobs: int = 200, window_s: float = 10.0) -> list[dict[str, Any]]:
    """Poll mode first, then wake mode: one row each."""
    return [await measure(False, jobs, window_s), await measure(True, jobs, window_s)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--window", type=float, default=10.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.jobs, args.window)), indent=2))
