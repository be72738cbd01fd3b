"""``fleet bench [--quick] [--json] [--out DIR]``: every per-queue benchmark, one report.

Plugged into the fleet CLI through the ``fleet.commands`` entry point; it runs only from a
checkout (the bench package is not part of the worker images).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import gpu, img, light, report, s3, wakeup
from bench.renderers import ExternalPillow
from fleet import corpus
from fleet.services import EmbeddedRedis
from fleet.settings import Settings

MODES: dict[str, dict[str, int]] = {
    # archive: efficiency and latency corpus; big: uploads of each kind, with all three variants
    # rounds: of the efficiency run, best of each side kept
    # memory_per_kind: the largest big uploads of each kind whose render memory is measured
    "quick": {
        "archive": 40,
        "rounds": 3,
        "big": 2,
        "repeat": 2,
        "uploads": 20,
        "light_jobs": 300,
        "memory_per_kind": 1,
        "wake_jobs": 100,
    },
    "full": {
        "archive": 200,
        "rounds": 2,
        "big": 4,
        "repeat": 3,
        "uploads": 100,
        "light_jobs": 2000,
        "memory_per_kind": 4,
        "wake_jobs": 500,
    },
}


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("bench", help="run the per-queue benchmarks")
    parser.add_argument("--quick", action="store_true", help="small corpora (CI); fails under the floors")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="where to write JSON/MD/PNG")
    parser.add_argument(
        "--pillow-simd",
        metavar="PYTHON",
        help="also time Pillow-SIMD, installed in this interpreter (`make bench-simd` builds one)",
    )
    parser.set_defaults(run=run)


async def collect(mode: str, pillow_simd: str | None = None) -> dict[str, Any]:
    sizes = MODES[mode]
    with (
        # Started first, so a Pillow-SIMD without its codecs fails now, not minutes into a run.
        ExternalPillow(pillow_simd) if pillow_simd else contextlib.nullcontext() as simd,
        EmbeddedRedis() as redis,
        tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp,
    ):
        root = Path(tmp)
        settings = Settings(
            redis_url=redis.url,
            storage_path=root,
            database_url=f"sqlite+aiosqlite:///{root / 'board.sqlite3'}",
            namespace="bench",
            log_level="WARNING",
            metrics_port=0,  # several worker processes on one host
        )
        archive = corpus.plan(sizes["archive"], seed=5, min_edge=300, max_edge=2400)
        big = corpus.plan(
            sizes["big"] * len(corpus.KINDS),
            seed=9,
            min_edge=2200,
            max_edge=4000,
            first_id=100_000,
            kinds=corpus.KINDS,
        )
        corpus.generate(root, archive + big)
        results: dict[str, Any] = {
            "mode": mode,
            "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}",
        }
        results["img"] = await img.efficiency(settings, archive, sizes["rounds"])
        results["s3"] = await s3.main(root, archive, settings, sizes["rounds"])
        results["per_upload"] = img.per_upload(root, big, settings, sizes["repeat"], simd)
        results["limit"] = img.limit(root, archive + big, settings, sizes["repeat"])
        results["memory"] = img.memory(root, big, settings, sizes["memory_per_kind"])
        results["thumb_effort"] = gpu.effort_table(root, archive + big)
        results["latency"] = await img.latency_and_enqueue(settings, archive, sizes["uploads"])
        results["cli"] = cli_start(settings, sizes["rounds"] * 3)
    results["light"] = await light.main(sizes["light_jobs"])
    results["wakeup"] = await wakeup.main(sizes["wake_jobs"])
    return results


def cli_start(settings: Settings, runs: int) -> dict[str, Any]:
    """Wall time of ``fleet health`` (start-up, one Redis round trip, exit) as the container
    healthcheck runs it, median of ``runs``: the command runs every few seconds on every replica."""
    env = {**os.environ, **settings.as_env()}
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "fleet", "health", "--queue", "img"], env=env, capture_output=True
        )
        times.append(time.perf_counter() - started)
    return {
        "health_s_median": round(statistics.median(times), 3),
        "health_s_min": round(min(times), 3),
        "runs": runs,
    }


def run(args: argparse.Namespace) -> int:
    mode = "quick" if args.quick else "full"
    results = asyncio.run(collect(mode, args.pillow_simd))
    report.write(results, args.out)
    print(json.dumps(results) if args.json else report.markdown(results))
    failures = report.below_floors(results)
    for failure in failures:
        print(f"bench: below floor: {failure}", file=sys.stderr)
    if mode == "quick":
        return 1 if failures else 0
    return 0
