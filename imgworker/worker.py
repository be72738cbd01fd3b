"""The img worker: one process serving the upload queue and the bulk queue from one render
pool, uploads first (``fleet worker img``).

Under the stock arq CLI each queue runs alone, with its own pool:
``arq imgworker.worker.WorkerSettings`` (uploads) and ``arq imgworker.worker.BulkWorkerSettings``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fleet import metrics
from fleet.bulk import settings_since
from fleet.registry import Queue
from fleet.settings import Settings, get_settings
from fleet.worker import Handler, build_worker
from imgworker import jobs
from imgworker.backend import ProcessPoolBackend
from imgworker.config import render_options, render_storage
from imgworker.jobs import ImgContext
from imgworker.render.storage import remove_stale_temps


class SharedPool:
    """One render pool for the workers of a process: started by the first to start, closed
    by the last to stop. Sharing it is what lets uploads overtake bulk renders."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.backend: ProcessPoolBackend | None = None
        self.users = 0
        self._starting = asyncio.Lock()

    async def acquire(self, ctx: ImgContext) -> None:
        async with self._starting:  # the second worker waits until the pool is warm
            backend = await self._start()
        self.users += 1
        ctx["backend"] = backend
        ctx["stats"].pool_size = backend.size  # beaten with the heartbeat
        ctx["settings_since"] = await settings_since(ctx["redis"], self.settings)

    async def _start(self) -> ProcessPoolBackend:
        settings = self.settings
        if self.backend is None:
            options = render_options(settings)
            storage = render_storage(settings)
            if isinstance(storage, Path):  # a bucket has no temp files: each output is one PUT
                remove_stale_temps(storage, [v.folder for v in options.variants])
            self.backend = ProcessPoolBackend(
                storage,
                options,
                settings.pool_size + settings.img_upload_reserve,
                timeout_s=settings.render_timeout_s,
                recycle_after=settings.render_recycle_after,
                memory_mb=settings.render_memory_mb,
                reserve=settings.img_upload_reserve,
            )
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


def worker_settings(settings: Settings) -> list[dict[str, Any]]:
    """Both img queues over one pool, as ``fleet worker img`` runs them."""
    pool = SharedPool(settings)
    return [upload_worker_settings(settings, pool), bulk_worker_settings(settings, pool)]


WorkerSettings = upload_worker_settings(get_settings(), SharedPool(get_settings()))
BulkWorkerSettings = bulk_worker_settings(get_settings(), SharedPool(get_settings()))
