"""img-queue benchmarks, each measured side by side in one run.

- efficiency: renders/s end to end (client -> Redis -> worker process -> pool) over renders/s
  of the same renders called directly on a pool of the same size;
- per upload, one libvips thread: the one-decode cascade against three independent renders
  and against Pillow (LANCZOS), on big uploads of every kind (all three variants, except
  GIFs, which stay under 1600 px as boards get them: no large variant);
- the limit: thumbnails/s against the rate of a reduce-on-load decode of the same JPEGs
  (all their entropy-coded data, no resize, no encode);
- latency: queueing to start, and to the thumbnail on disk, idle and during a bulk run;
- enqueue: single jobs/s, and images/s fed by the bulk feeder;
- memory: peak RSS (and address space) of a render process, per kind of big upload, under
  the pool's own bound (RENDER_MEMORY_MB).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import re
import statistics
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from bench import renderers
from fleet import corpus, db
from fleet.board import Folder
from fleet.bulk import Selection, rethumb
from fleet.client import FleetClient
from fleet.processes import wait_healthy, worker_process
from fleet.registry import Queue
from fleet.settings import Settings
from imgworker.backend import ProcessPoolBackend, configure_vips, limit_memory
from imgworker.config import render_options
from imgworker.render import RenderOptions, RenderRequest, render, steps, storage
from imgworker.render.storage import original_path

# Renders are timed in CPU seconds of the whole process (all its threads), not wall time:
# libvips compresses a save in a second thread while the pixels are computed, which an idle
# 2-core machine would count as free, but a loaded pool (one process per core) pays for.
cpu_time = time.process_time


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000, 1)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99)}


def _requests(samples: list[corpus.Sample]) -> list[RenderRequest]:
    return [RenderRequest(s.image_id, s.filename, s.ext) for s in samples]


async def direct_seconds(settings: Settings, samples: list[corpus.Sample]) -> float:
    """The same renders called directly on a warm pool of the img worker's size."""
    backend = ProcessPoolBackend(settings.storage_path, render_options(settings), settings.pool_size)
    try:
        await backend.warm_up()
        started = time.perf_counter()
        results = await backend.render_batch(_requests(samples))
        seconds = time.perf_counter() - started
    finally:
        await backend.close()
    assert all(r.ok for r in results)
    return seconds


async def efficiency(settings: Settings, samples: list[corpus.Sample], rounds: int = 2) -> dict[str, Any]:
    """Fleet end to end vs a direct pool of the same size, same originals, same run.

    The two alternate for ``rounds`` and each keeps its best round, so one hiccup of a noisy
    neighbour does not decide the ratio. The worker process is up (idle) in both."""
    like_for_like = settings.replace(img_upload_reserve=0, log_level="WARNING")  # the same pool size
    direct: list[float] = []
    fleet: list[float] = []
    with worker_process(["img"], like_for_like):
        async with await FleetClient.connect(settings) as client:
            await wait_healthy(client, Queue.IMG)
            for _ in range(rounds):
                direct.append(await direct_seconds(settings, samples))
                fleet.append(await _fleet_seconds(client, samples))
    return best_rounds(len(samples), settings.pool_size, ("direct", direct), ("fleet", fleet), "efficiency")


def best_rounds(
    renders: int, processes: int, base: tuple[str, list[float]], other: tuple[str, list[float]], ratio: str
) -> dict[str, Any]:
    """Two sides timed in alternating rounds: each side's best round, as renders/s, and
    ``ratio`` = base time / other time (1.0: the other side costs nothing extra)."""
    (base_name, base_s), (other_name, other_s) = base, other
    best_base, best_other = min(base_s), min(other_s)
    return {
        "renders": renders,
        "rounds": len(base_s),
        "processes": processes,
        f"{base_name}_renders_per_s": round(renders / best_base, 2),
        f"{other_name}_renders_per_s": round(renders / best_other, 2),
        ratio: round(best_base / best_other, 3),
    }


async def _fleet_seconds(client: FleetClient, samples: list[corpus.Sample]) -> float:
    """Every sample queued as an upload, until the last result is in."""
    started = time.perf_counter()
    jobs = [await client.render_upload(s.image_id, s.filename, s.ext) for s in samples]
    for job in jobs:
        assert (await job.result(timeout=600, poll_delay=0.01))["ok"]
    return time.perf_counter() - started


def per_upload(
    root: Path,
    samples: list[corpus.Sample],
    settings: Settings,
    repeat: int,
    simd: renderers.ExternalPillow | None = None,
) -> dict[str, Any]:
    """CPU milliseconds per upload (all variants), in this process with one libvips thread.

    Each kind of original is timed on its own, and the headline is the board-like mix of
    :data:`fleet.corpus.WEIGHTS` over those per-kind means, so a small corpus cannot be
    swayed by which kinds a seed happened to draw. ``simd`` adds Pillow-SIMD, timed in its
    own interpreter."""
    configure_vips()
    options = render_options(settings.replace(iqdb_url=None))
    requests = _requests(samples)
    first = requests[0]  # one untimed render each: imports and codec set-up
    render(root, first, options)
    renderers.independent(root, first, options)
    renderers.pillow(root, first, options, root / "pillow")
    if simd is not None:
        simd.render(root, first, options, root / "pillow-simd")
    timings: dict[str, dict[str, list[float]]] = {}
    for _ in range(repeat):  # interleaved, so drift hits every renderer alike
        for sample, request in zip(samples, requests, strict=True):
            kind = timings.setdefault(sample.kind, {name: [] for name in RENDERERS})
            started = cpu_time()
            assert render(root, request, options).ok
            kind["cascade"].append(cpu_time() - started)
            started = cpu_time()
            assert all(r.ok for r in renderers.independent(root, request, options))
            kind["independent"].append(cpu_time() - started)
            started = cpu_time()
            renderers.pillow(root, request, options, root / "pillow")
            kind["pillow"].append(cpu_time() - started)
            if simd is not None:
                kind["pillow_simd"].append(simd.render(root, request, options, root / "pillow-simd"))
    means = {kind: {k: statistics.fmean(v) for k, v in t.items() if v} for kind, t in timings.items()}
    weights = {kind: corpus.WEIGHTS[kind] for kind in means}
    mix = {
        renderer: sum(weights[k] * means[k][renderer] for k in weights) / sum(weights.values())
        for renderer in next(iter(means.values()))
    }
    by_kind = {kind: _summary(m) for kind, m in means.items()}
    summary = {"uploads": len(samples), "repeat": repeat, "weights": weights, **_summary(mix)}
    if simd is not None:
        summary["pillow_simd_version"] = simd.version
    return {**summary, "by_kind": by_kind}


RENDERERS = ("cascade", "independent", "pillow", "pillow_simd")


def _summary(seconds: dict[str, float]) -> dict[str, float]:
    """Milliseconds per renderer, and how many times slower than the cascade each other is."""
    summary = {f"{name}_ms": round(value * 1000, 1) for name, value in seconds.items()}
    summary["cascade_speedup"] = round(seconds["independent"] / seconds["cascade"], 3)
    for name in ("pillow", "pillow_simd"):
        if name in seconds:
            summary[f"{name}_speedup"] = round(seconds[name] / seconds["cascade"], 3)
    return summary


def limit(root: Path, samples: list[corpus.Sample], settings: Settings, repeat: int) -> dict[str, Any]:
    """Thumbnails/s per core against the entropy-decode rate of the same JPEGs."""
    import pyvips

    configure_vips()
    jpegs = [s for s in samples if s.kind.startswith("jpeg")]
    thumb_only = render_options(settings.replace(iqdb_url=None), variants=("thumb",), mode="all")
    decode_s = thumb_s = 0.0
    for _ in range(repeat):
        for sample in jpegs:
            path = original_path(root, sample.filename, sample.ext)
            started = cpu_time()
            pyvips.Image.new_from_file(str(path), shrink=8, access="sequential").avg()  # every coefficient
            decode_s += cpu_time() - started
            started = cpu_time()
            assert render(root, RenderRequest(sample.image_id, sample.filename, sample.ext), thumb_only).ok
            thumb_s += cpu_time() - started
    n = len(jpegs) * repeat
    return {
        "jpegs": len(jpegs),
        "decode_per_s_per_core": round(n / decode_s, 1),
        "thumbs_per_s_per_core": round(n / thumb_s, 1),
        "fraction_of_limit": round(decode_s / thumb_s, 3),
        "limit_decode_ms": round(decode_s / n * 1000, 2),
        "thumb_ms": round(thumb_s / n * 1000, 2),
        "thumb_profile_ms": thumb_profile(root, jpegs, thumb_only),
    }


def memory(root: Path, samples: list[corpus.Sample], settings: Settings, per_kind: int) -> dict[str, Any]:
    """Peak memory of a render process, per kind: the ``per_kind`` largest uploads of each kind
    (all variants) rendered in one fresh process configured and bounded as the pool's are; its
    peak RSS is read from /proc and reset between kinds."""
    options = render_options(settings.replace(iqdb_url=None))
    kinds: dict[str, list[RenderRequest]] = {}
    for sample in sorted(samples, key=lambda s: -s.width * s.height):
        chosen = kinds.setdefault(sample.kind, [])
        if len(chosen) < per_kind:
            chosen.append(RenderRequest(sample.image_id, sample.filename, sample.ext))
    context = multiprocessing.get_context("forkserver")
    with context.Pool(1) as pool:
        by_kind, address_space = pool.apply(_render_peaks, (root, kinds, options, settings.render_memory_mb))
    return {
        "memory_limit_mb": settings.render_memory_mb,
        "peak_rss_mb": max(by_kind.values()),
        "peak_address_space_mb": address_space,
        "rss_mb_by_kind": by_kind,
    }


def _render_peaks(
    root: Path, kinds: dict[str, list[RenderRequest]], options: RenderOptions, memory_mb: int
) -> tuple[dict[str, int], int]:
    """In a render process: each kind's peak RSS in MB, then the process's peak address space."""
    configure_vips()
    limit_memory(memory_mb)
    peaks: dict[str, int] = {}
    for kind, requests in kinds.items():
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak RSS to the current one
        for request in requests:
            result = render(root, request, options)
            assert result.ok, result.error
        peaks[kind] = _status_mb("VmHWM")
    return peaks, _status_mb("VmPeak")


def _status_mb(field: str) -> int:
    found = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(found.group(1)) // 1024 if found else 0


def thumb_profile(root: Path, samples: list[corpus.Sample], options: RenderOptions) -> dict[str, float]:
    """CPU milliseconds per thumbnail in each step, timed one by one with the pipeline's own step
    functions. The pipeline streams the decode into the encoder; here the decoded pixels are
    held in memory in between, so the two can be told apart."""
    thumb = next(v for v in options.variants if v.name == "thumb")
    spent = dict.fromkeys(("inspect (header)", "decode + shrink", "sharpen + encode", "write"), 0.0)

    def lap(step: str, since: float) -> float:
        now = cpu_time()
        spent[step] += now - since
        return now

    for sample in samples:
        source = original_path(root, sample.filename, sample.ext)
        target = storage.output_path(root, "profile", sample.filename, thumb.ext(sample.ext))
        started = cpu_time()
        header = steps.inspect(source, options.max_pixels)
        started = lap("inspect (header)", started)
        image = steps.load(
            source, header.format, thumb.width, thumb.height, options.fail_on, header.has_profile
        )
        image = steps.to_srgb(image).copy_memory()
        started = lap("decode + shrink", started)
        image = steps.sharpen(image) if thumb.sharpen else image
        fmt = thumb.output_format(sample.ext)
        assert fmt is not None
        data = steps.encode(image, fmt, thumb.quality)
        started = lap("sharpen + encode", started)
        storage.atomic_write(target, data)
        lap("write", started)
    return {step: round(seconds / len(samples) * 1000, 2) for step, seconds in spent.items()}


async def board_with_uploads(
    settings: Settings, archive: list[corpus.Sample], upload: corpus.Sample, uploads: int
) -> AsyncEngine:
    """A board database holding ``archive`` and ``uploads`` rows from ``upload.image_id`` on,
    all naming the one ``upload`` original (written here): each upload gets its own id."""
    corpus.write_sample(settings.storage_path, upload)
    engine = db.create_engine(settings)
    await db.create_schema(engine)
    rows = [{"image_id": s.image_id, "filename": s.filename, "ext": s.ext} for s in archive]
    rows += [
        {"image_id": upload.image_id + i, "filename": upload.filename, "ext": upload.ext}
        for i in range(uploads)
    ]
    async with engine.begin() as conn:
        await conn.execute(sa.insert(db.images), rows)
    return engine


async def latency_and_enqueue(
    settings: Settings, archive: list[corpus.Sample], uploads: int
) -> dict[str, Any]:
    """Upload latency idle and during a bulk run; enqueue rates."""
    root = settings.storage_path
    upload = corpus.Sample(990_000, "2025-06-01-latency", "jpg", "jpeg", 1600, 1200, 5)
    engine = await board_with_uploads(settings, archive, upload, 2 * uploads)
    thumb = root / Folder.THUMBS / f"{upload.filename}.webp"

    async def measure(client: FleetClient, first: int) -> tuple[list[float], list[float]]:
        to_start, to_disk = [], []
        for i in range(uploads):
            thumb.unlink(missing_ok=True)
            started = time.time()
            job = await client.render_upload(990_000 + first + i, upload.filename, upload.ext)
            while not thumb.exists():
                await asyncio.sleep(0.001)
            to_disk.append(time.time() - started)
            await job.result(timeout=60, poll_delay=0.01)
            info = await job.result_info()
            assert info is not None
            to_start.append((info.start_time - info.enqueue_time).total_seconds())
        return to_start, to_disk

    quiet = settings.replace(log_level="WARNING")
    with worker_process(["img"], quiet), worker_process(["light"], quiet):
        async with await FleetClient.connect(settings) as client:
            for queue in (Queue.IMG, Queue.IMG_BULK, Queue.DB):
                await wait_healthy(client, queue)
            idle_start, idle_disk = await measure(client, 0)
            bulk = asyncio.create_task(
                rethumb(
                    client.redis, settings, Selection(reindex="never"), engine=engine, force=True, poll_s=0.05
                )
            )
            await asyncio.sleep(1.0)  # let the bulk run saturate the pool
            busy_start, busy_disk = await measure(client, uploads)
            summary = await bulk

    # Enqueue rates, with no worker running.
    async with await FleetClient.connect(
        settings.replace(namespace=settings.namespace + "-enqueue")
    ) as client:
        n = 2000
        started = time.perf_counter()
        for i in range(n):
            await client.render_upload(i, "x", "jpg")
        single = n / (time.perf_counter() - started)
        unbounded = client.settings.replace(
            bulk_max_queued=10**9, database_url=f"sqlite+aiosqlite:///{root / 'feed.sqlite3'}"
        )
        feed_engine = db.create_engine(unbounded)
        await db.create_schema(feed_engine)
        async with feed_engine.begin() as conn:
            await conn.execute(
                sa.insert(db.images),
                [{"image_id": i, "filename": f"2025-01-01-{i}", "ext": "jpg"} for i in range(1, 20_001)],
            )
        fed = await _feed_rate(client, unbounded, feed_engine)
        await feed_engine.dispose()
    await engine.dispose()
    return {
        "latency_ms": {
            "idle": {"queue_to_start": percentiles(idle_start), "queue_to_thumbnail": percentiles(idle_disk)},
            "during_bulk": {
                "queue_to_start": percentiles(busy_start),
                "queue_to_thumbnail": percentiles(busy_disk),
            },
            "thumbnail_p95_ratio": round(percentiles(busy_disk)["p95"] / percentiles(idle_disk)["p95"], 2),
            "bulk_images_per_s_meanwhile": summary.images_per_s,
        },
        "enqueue": {"single_jobs_per_s": round(single), "bulk_feeder_images_per_s": round(fed)},
    }


async def _feed_rate(client: FleetClient, settings: Settings, engine: Any) -> float:
    """Images/s the bulk feeder queues (in batches) from a 20,000-row table, no worker draining."""
    task = asyncio.create_task(
        rethumb(client.redis, settings, Selection(mode="all"), engine=engine, poll_s=0.01)
    )
    started = time.perf_counter()
    from fleet.bulk import BulkRun

    run = BulkRun(client.redis, settings.namespace, Selection(mode="all").run_id(settings))
    total = None
    while True:
        state = await run.state()
        total = int(state.get("total", 0)) or None
        if total and int(state.get("fed", 0)) >= total:
            break
        await asyncio.sleep(0.005)
    seconds = time.perf_counter() - started
    task.cancel()
    return (total or 0) / seconds
