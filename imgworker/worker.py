"""The img worker: one process serving the upload queue and the bulk queue from one render
pool, uploads first (``fleet worker img``).

Under the stock arq CLI each queue runs alone, with its own pool:
``arq imgworker.worker.WorkerSettings`` (uploads) and ``arq imgworker.worker.BulkWorkerSettings``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleet import metrics
from fleet.bulk import settings_since
from fleet.logging import get_logger
from fleet.registry import Queue
from fleet.settings import Settings, SettingsError, get_settings
from fleet.worker import Handler, build_worker
from imgworker import jobs
from imgworker.backend import ProcessPoolBackend, configure_vips
from imgworker.config import render_options, render_storage
from imgworker.jobs import ImgContext
from imgworker.render.storage import Where, remove_stale_temps

if TYPE_CHECKING:  # the GPU modules are imported only by a worker that asked for them
    from imgworker.gpu.backend import GpuBackend
    from imgworker.gpu.codec import Codec

log = get_logger("imgworker.worker")


def start_gpu(settings: Settings) -> Codec | None:
    """With RENDER_BACKEND=gpu, the GPU's codec, probed before the worker starts; None for
    the CPU pool alone. No usable GPU: refused in one line (SettingsError: ``fleet`` prints
    it and exits 2), or with GPU_FALLBACK=cpu a warning and the pool alone."""
    if settings.render_backend != "gpu":
        return None
    from imgworker.gpu.codec import GpuUnavailableError, parse_device, probe

    try:
        return probe(parse_device(settings.gpu_device))
    except GpuUnavailableError as exc:
        if settings.gpu_fallback == "refuse":
            instead = "GPU_FALLBACK=cpu starts on the CPU pool instead"
            raise SettingsError(f"setting RENDER_BACKEND=gpu cannot start: {exc} ({instead})") from None
        log.warning("no usable GPU: rendering on the CPU pool (GPU_FALLBACK=cpu)", reason=str(exc))
        return None


class SharedPool:
    """One render pool for the workers of a process: started by the first to start, closed
    by the last to stop. Sharing it is what lets uploads overtake bulk renders."""

    def __init__(self, settings: Settings, gpu: Codec | None = None, probed: bool = False) -> None:
        self.settings = settings
        self.backend: ProcessPoolBackend | GpuBackend | None = None
        self.storage = render_storage(settings)
        self.users = 0
        self._starting = asyncio.Lock()
        self.gpu = gpu
        self._probed = probed
        """Whether RENDER_BACKEND=gpu was probed already (``fleet worker img`` does it before
        connecting anywhere); the stock arq CLI's settings probe at start-up instead."""

    async def acquire(self, ctx: ImgContext) -> None:
        async with self._starting:  # the second worker waits until the pool is warm
            backend = await self._start()
        self.users += 1
        ctx["backend"] = backend
        ctx["storage"] = self.storage  # a bulk batch's skip check reads it from this process
        ctx["stats"].pool_size = backend.size  # beaten with the heartbeat
        ctx["settings_since"] = await settings_since(ctx["redis"], self.settings)

    async def _start(self) -> ProcessPoolBackend | GpuBackend:
        settings = self.settings
        if self.backend is None:
            options = render_options(settings)
            storage = self.storage
            if isinstance(storage, Path):  # a bucket has no temp files: each output is one PUT
                remove_stale_temps(storage, [v.folder for v in options.variants])
            pool = ProcessPoolBackend(
                storage,
                options,
                settings.pool_size + settings.img_upload_reserve,
                timeout_s=settings.render_timeout_s,
                recycle_after=settings.render_recycle_after,
                memory_mb=settings.render_memory_mb,
                reserve=settings.img_upload_reserve,
            )
            if not self._probed:
                self.gpu, self._probed = start_gpu(settings), True
            self.backend = pool if self.gpu is None else gpu_backend(settings, storage, self.gpu, pool)
            await self.backend.warm_up()
            backend = self.backend
            metrics.track_pool(lambda: backend.size, lambda: backend.busy)
        return self.backend

    async def release(self, ctx: ImgContext) -> None:
        self.users -= 1
        if self.users == 0 and self.backend is not None:
            await self.backend.close()
            self.backend = None


def _over_pool(
    queue: Queue,
    job: Handler[Any, ImgContext],
    settings: Settings,
    pool: SharedPool,
    max_jobs: int,
    job_timeout_s: float,
) -> dict[str, Any]:
    """An img queue's worker, rendering through the shared pool."""
    return build_worker(
        queue,
        [job],
        settings,
        on_startup=pool.acquire,
        on_shutdown=pool.release,
        max_jobs=max_jobs,
        job_timeout_s=job_timeout_s,
    )


def upload_worker_settings(settings: Settings, pool: SharedPool) -> dict[str, Any]:
    # Twice the pool: while one job's result travels back, the next render is already running.
    max_jobs, timeout_s = settings.img_concurrency, settings.render_timeout_s + 30
    return _over_pool(Queue.IMG, jobs.render_upload, settings, pool, max_jobs, timeout_s)


def bulk_worker_settings(settings: Settings, pool: SharedPool) -> dict[str, Any]:
    max_jobs, timeout_s = settings.bulk_max_jobs, settings.bulk_batch_size * (settings.render_timeout_s + 5)
    return _over_pool(Queue.IMG_BULK, jobs.render_batch, settings, pool, max_jobs, timeout_s)


def gpu_backend(settings: Settings, storage: Where, codec: Codec, pool: ProcessPoolBackend) -> GpuBackend:
    """The GPU backend in front of ``pool``: one GPU thread, and ``pool``'s size of threads for
    the CPU side of its batches (reads, WebP encodes, writes)."""
    from concurrent.futures import ThreadPoolExecutor

    from imgworker.gpu.backend import GpuBackend
    from imgworker.gpu.pipeline import GpuRenderer

    threads = ThreadPoolExecutor(
        settings.pool_size, thread_name_prefix="gpu-side", initializer=configure_vips
    )
    renderer = GpuRenderer(storage, codec, settings.gpu_max_pixels, threads)
    log.info("rendering baseline JPEGs on the GPU", device=codec.where, batch=settings.gpu_batch_size)
    return GpuBackend(
        renderer, pool, batch_size=settings.gpu_batch_size, batch_wait_s=settings.gpu_batch_wait_ms / 1000
    )


def worker_settings(settings: Settings) -> list[dict[str, Any]]:
    """Both img queues over one pool, as ``fleet worker img`` runs them (a GPU asked for is
    probed first: a worker that cannot have it refuses before connecting anywhere)."""
    pool = SharedPool(settings, start_gpu(settings), probed=True)
    return [upload_worker_settings(settings, pool), bulk_worker_settings(settings, pool)]


WorkerSettings = upload_worker_settings(get_settings(), SharedPool(get_settings()))
BulkWorkerSettings = bulk_worker_settings(get_settings(), SharedPool(get_settings()))
