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
from fleet.worker import Context, build_worker
from imgworker import jobs
from imgworker.backend import ProcessPoolBackend
from imgworker.config import render_options, render_storage
from imgworker.render.storage import remove_stale_temps


class SharedPool:
    """One render pool for the workers of a process: started by the first to start, closed
    by the last to stop. Sharing it is what lets uploads overtake bulk renders."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.backend: ProcessPoolBackend | None = None
        self.storage = render_storage(settings)
        self.users = 0
        self._starting = asyncio.Lock()

    async def acquire(self, ctx: Context) -> None:
        async with self._starting:  # the second worker waits until the pool is warm
            await self._start()
        self.users += 1
        ctx["backend"] = self.backend
        ctx["storage"] = self.storage  # a bulk batch's skip check reads it from this process
        ctx["stats"].pool_size = self.backend.size if self.backend else None  # beaten with the heartbeat
        ctx["settings_since"] = await settings_since(ctx["redis"], self.settings)

    async def _start(self) -> None:
        settings = self.settings
        if self.backend is None:
            options = render_options(settings)
            storage = self.storage
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

    async def release(self, ctx: Context) -> None:
        self.users -= 1
        if self.users == 0 and self.backend is not None:
            await self.backend.close()
            self.backend = None


def upload_worker_settings(settings: Settings, pool: SharedPool) -> dict[str, Any]:
    return build_worker(
        Queue.IMG,
        [jobs.render_upload],
        settings,
        on_startup=pool.acquire,
        on_shutdown=pool.release,
        # Twice the pool: while one job's result travels back, the next render is already running.
        max_jobs=settings.img_concurrency,
        job_timeout_s=settings.render_timeout_s + 30,
    )


def bulk_worker_settings(settings: Settings, pool: SharedPool) -> dict[str, Any]:
    return build_worker(
        Queue.IMG_BULK,
        [jobs.render_batch],
        settings,
        on_startup=pool.acquire,
        on_shutdown=pool.release,
        max_jobs=settings.bulk_max_jobs,
        job_timeout_s=settings.bulk_batch_size * (settings.render_timeout_s + 5),
    )


def worker_settings(settings: Settings) -> list[dict[str, Any]]:
    """Both img queues over one pool, as ``fleet worker img`` runs them."""
    pool = SharedPool(settings)
    return [upload_worker_settings(settings, pool), bulk_worker_settings(settings, pool)]


WorkerSettings = upload_worker_settings(get_settings(), SharedPool(get_settings()))
BulkWorkerSettings = bulk_worker_settings(get_settings(), SharedPool(get_settings()))
