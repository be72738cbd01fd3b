"""GPU backend benchmark (``bench/gpu.sh``) and the WebP effort table (``fleet bench``).

- effort: bytes against CPU time of the 500 px WebP thumbnail for efforts 0-6, on the
  corpus's thumbnails: what a GPU leaves on the CPU is this encode.
- gpu: renders/s of the GPU backend against the CPU pool per core on the corpus's baseline
  JPEGs, a batch-size sweep, and the PSNR of every GPU output against the pyvips path's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyvips

from fleet import corpus
from fleet.board import Folder
from fleet.render_settings import RenderSettings
from imgworker.backend import Priority, ProcessPoolBackend, configure_vips
from imgworker.gpu.backend import GpuBackend
from imgworker.gpu.codec import Codec, parse_device, probe
from imgworker.gpu.pipeline import GpuRenderer
from imgworker.render import RenderOptions, RenderRequest, options_of, steps
from imgworker.render.storage import original_path

MIN_PSNR_DB = 35.0
"""Every GPU output against the pyvips path's (the issue's bar)."""


def psnr(a: Any, b: Any) -> float:
    """Peak signal-to-noise ratio in dB of two 8-bit images of one size (inf when equal)."""
    if a.shape != b.shape:
        raise ValueError(f"sizes differ: {a.shape} and {b.shape}")
    mse = float(np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


# --- the WebP effort table -----------------------------------------------------------------------

EFFORTS = range(7)


def effort_table(
    root: Path, samples: Sequence[corpus.Sample], thumbnails: int = 12, repeat: int = 1
) -> dict[str, Any]:
    """Bytes against CPU time of the WebP thumbnail encode for efforts 0-6, on the 500 px
    thumbnails of ``thumbnails`` originals spread over ``samples`` (made once, in memory, as
    the render makes them: resized and sharpened), each encoded at THUMB_QUALITY 75, the
    fastest of ``repeat`` runs kept. Effort 6 costs about 25 times effort 4 here, hence few.

    CPU seconds of this process (libvips runs one thread here, as in a render process)."""
    configure_vips()
    thumbs = []
    for s in samples[:: max(1, len(samples) // thumbnails)][:thumbnails]:
        path = original_path(root, s.filename, s.ext)
        image = steps.to_srgb(pyvips.Image.thumbnail(str(path), 500, height=500, size="down"))
        thumbs.append(steps.sharpen(steps.drop_opaque_alpha(image.copy_memory())).copy_memory())
    rows: list[dict[str, Any]] = []
    for effort in EFFORTS:
        best = math.inf
        size = 0
        for _ in range(repeat):
            started = time.process_time()
            size = sum(len(steps.encode(t, "webp", 75, effort)) for t in thumbs)
            best = min(best, time.process_time() - started)
        rows.append({"effort": effort, "ms_per_thumb": best * 1000 / len(thumbs), "bytes": size})
    default = next(r for r in rows if r["effort"] == 4)
    for row in rows:
        row["bytes_vs_4"] = round(row["bytes"] / default["bytes"], 3)
        row["time_vs_4"] = round(row["ms_per_thumb"] / default["ms_per_thumb"], 3)
        row["ms_per_thumb"] = round(row["ms_per_thumb"], 2)
    return {"thumbnails": len(thumbs), "quality": 75, "rows": rows}


# --- the GPU benchmark ---------------------------------------------------------------------------

ORIGINALS = {"quick": 24, "full": 96}
SWEEP = {"quick": (1, 8, 24), "full": (1, 8, 32, 96)}
"""Batch sizes tried (GPU_BATCH_SIZE); the last is the whole corpus in one batch."""


async def _timed(backend: ProcessPoolBackend | GpuBackend, requests: list[RenderRequest]) -> float:
    """Seconds for ``backend``, warm, to render ``requests`` as one bulk batch (then closed)."""
    try:
        await backend.warm_up()
        started = time.perf_counter()
        results = await backend.render_batch(requests, priority=Priority.BULK)
        seconds = time.perf_counter() - started
    finally:
        await backend.close()
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    return seconds


async def _gpu_seconds(
    root: Path, requests: list[RenderRequest], options: RenderOptions, codec: Codec, batch: int, threads: int
) -> tuple[float, dict[str, int]]:
    """The corpus through the GPU backend (batches of ``batch``, ``threads`` CPU threads for
    reads, WebP encodes and writes, a one-process pool for whatever falls back)."""
    with ThreadPoolExecutor(threads, initializer=configure_vips) as pool_threads:
        backend = GpuBackend(
            GpuRenderer(root, codec, 40_000_000, pool_threads),
            ProcessPoolBackend(root, options, 1),
            batch_size=batch,
            batch_wait_s=0.002,
        )
        seconds = await _timed(backend, requests)
    return seconds, dict(backend.counts)


def _psnr_by_variant(gpu_root: Path, cpu_root: Path, requests: list[RenderRequest]) -> dict[str, Any]:
    """PSNR of every output the GPU path wrote against the pyvips path's (same size, or a failure)."""
    found: dict[str, list[float]] = {}
    mismatched = []
    for folder in (Folder.LARGE, Folder.MEDIUM, Folder.THUMBS, Folder.IQDB):
        for path in sorted((gpu_root / folder).glob("*")) if (gpu_root / folder).is_dir() else []:
            ours = pyvips.Image.new_from_file(str(path)).numpy()
            theirs_path = cpu_root / folder / path.name
            if not theirs_path.exists():
                mismatched.append(f"{folder}/{path.name}: no pyvips output")
                continue
            theirs = pyvips.Image.new_from_file(str(theirs_path)).numpy()
            if ours.shape != theirs.shape:
                mismatched.append(f"{folder}/{path.name}: {ours.shape} vs {theirs.shape}")
                continue
            found.setdefault(folder, []).append(psnr(ours, theirs))
    values = [v for vs in found.values() for v in vs]
    return {
        "outputs": len(values),
        "min_db": round(min(values), 2) if values else None,
        "median_db": round(statistics.median(values), 2) if values else None,
        "min_db_by_variant": {k: round(min(v), 2) for k, v in found.items()},
        "size_mismatches": mismatched,
    }


async def gpu_bench(out: Path, device: str, mode: str) -> dict[str, Any]:
    """The GPU backend against the CPU pool per core on the corpus's baseline JPEGs."""
    import tempfile

    codec = probe(parse_device(device))
    samples = corpus.plan(ORIGINALS[mode], seed=16, min_edge=600, max_edge=4000, kinds=("jpeg",))
    requests = [RenderRequest(s.image_id, s.filename, s.ext) for s in samples]
    options = options_of(RenderSettings(iqdb=True))
    threads = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="fleet-gpu-bench-") as tmp:
        gpu_root, cpu_root = Path(tmp) / "gpu", Path(tmp) / "cpu"
        corpus.generate(gpu_root, samples)
        shutil.copytree(gpu_root / Folder.ORIGINALS, cpu_root / Folder.ORIGINALS)
        cpu_s = await _timed(ProcessPoolBackend(cpu_root, options, 1), requests)  # one core
        cpu_rate = len(requests) / cpu_s
        sweep: list[dict[str, Any]] = []
        for batch in SWEEP[mode]:
            seconds, counts = await _gpu_seconds(gpu_root, requests, options, codec, batch, threads)
            rate = len(requests) / seconds
            sweep.append(
                {
                    "batch_size": batch,
                    "renders_per_s": round(rate, 2),
                    "vs_cpu_core": round(rate / cpu_rate, 2),
                    "counts": counts,
                }
            )
        quality = _psnr_by_variant(gpu_root, cpu_root, requests)
        efforts = effort_table(cpu_root, samples)
    megapixels = statistics.mean(s.width * s.height for s in samples) / 1e6
    results = {
        "device": codec.where,
        "cpu_mode": codec.device is None,
        "mode": mode,
        "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}",
        "corpus": {
            "originals": len(samples),
            "kind": "baseline JPEG",
            "mean_megapixels": round(megapixels, 2),
        },
        "variants": [v.name for v in options.variants],
        "cpu_pool_per_core": {"renders_per_s": round(cpu_rate, 2), "processes": 1},
        "gpu_threads": threads,
        "gpu": sweep,
        "best_vs_cpu_core": max(float(row["vs_cpu_core"]) for row in sweep),
        "psnr": quality,
        "thumb_effort": efforts,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu-bench.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.gpu --out DIR [--device N|cpu] [--quick]`` (bench/gpu.sh runs it)."""
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=main.__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="0", help="CUDA device index, or cpu (the libraries' CPU mode)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    results = asyncio.run(gpu_bench(args.out, args.device, "quick" if args.quick else "full"))
    print(json.dumps(results, indent=2))
    worst = results["psnr"]["min_db"]
    if results["psnr"]["size_mismatches"] or worst is None or worst < MIN_PSNR_DB:
        print(f"bench.gpu: PSNR {worst} dB or sizes below the bar", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
