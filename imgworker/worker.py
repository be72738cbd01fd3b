"""The img worker: arq settings for the upload queue, runnable as ``fleet worker img`` or
with the stock CLI as ``arq imgworker.worker.WorkerSettings``."""

from __future__ import annotations

from typing import Any

from fleet.registry import Queue
from fleet.settings import Settings, get_settings
from fleet.worker import Context, build_worker
from imgworker import jobs
from imgworker.backend import ProcessPoolBackend
from imgworker.config import render_options
from imgworker.render.storage import remove_stale_temps


def worker_settings(settings: Settings) -> dict[str, Any]:
    options = render_options(settings)

    async def startup(ctx: Context) -> None:
        remove_stale_temps(settings.storage_path, [v.folder for v in options.variants])
        backend = ProcessPoolBackend(
            settings.storage_path,
            options,
            settings.pool_size,
            timeout_s=settings.render_timeout_s,
            recycle_after=settings.render_recycle_after,
        )
        await backend.warm_up()
        ctx["backend"] = backend

    async def shutdown(ctx: Context) -> None:
        if "backend" in ctx:
            await ctx["backend"].close()

    return build_worker(
        Queue.IMG,
        [jobs.render_upload],
        settings,
        on_startup=startup,
        on_shutdown=shutdown,
        # Twice the pool: while one job's result travels back, the next render is already running.
        max_jobs=settings.img_concurrency,
        job_timeout_s=settings.render_timeout_s + 30,
    )


WorkerSettings = worker_settings(get_settings())
