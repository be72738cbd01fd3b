"""The light workers: one for IQDB (``fleet worker iqdb``), one for the database
(``fleet worker db``), each with its own queue, scaled and measured on its own. No process
pool: every job waits on I/O. Stock CLI: ``arq ratingworker.worker.IqdbWorkerSettings``
and ``arq ratingworker.worker.DbWorkerSettings``."""

from __future__ import annotations

import logging
from typing import Any

from arq.cron import cron

from fleet.db import create_engine
from fleet.registry import Queue
from fleet.settings import Settings, get_settings
from fleet.worker import Context, build_worker
from ratingworker import jobs
from ratingworker.iqdb import IqdbClient

log = logging.getLogger("ratingworker")


async def _open_db(ctx: Context) -> None:
    ctx["db"] = create_engine(ctx["settings"])


async def _close_db(ctx: Context) -> None:
    if "db" in ctx:
        await ctx["db"].dispose()


def iqdb_worker_settings(settings: Settings) -> dict[str, Any]:
    async def startup(ctx: Context) -> None:
        await _open_db(ctx)
        if settings.iqdb_url:
            ctx["iqdb"] = IqdbClient(settings.iqdb_url, settings.iqdb_timeout_s)
        else:
            log.warning("IQDB_URL is not set: IQDB indexing is switched off")

    async def shutdown(ctx: Context) -> None:
        if "iqdb" in ctx:
            await ctx["iqdb"].aclose()
        await _close_db(ctx)

    return build_worker(
        Queue.IQDB,
        [jobs.index_iqdb, jobs.delete_from_iqdb],
        settings,
        on_startup=startup,
        on_shutdown=shutdown,
        max_jobs=settings.light_max_jobs,
        job_timeout_s=settings.iqdb_timeout_s * 3,
    )


def review_schedule(every_s: int) -> dict[str, Any]:
    """arq cron fields for "every ``every_s`` seconds" (a divisor of a minute, hour or day)."""
    if every_s < 60:
        return {"second": set(range(0, 60, every_s)), "minute": None}
    if every_s < 3600:
        return {"minute": set(range(0, 60, every_s // 60)), "second": 0}
    return {"hour": set(range(0, 24, every_s // 3600)), "minute": 0, "second": 0}


def db_worker_settings(settings: Settings) -> dict[str, Any]:
    # unique: each replica offers the run for a slot under the same job id, so it runs once;
    # the kept result holds that id, so a replica that comes late to a slot cannot rerun it.
    reviews = cron(
        jobs.close_expired_reviews,
        name=f"{settings.namespace}:close_expired_reviews",
        unique=True,
        keep_result=max(settings.keep_result_s, 2 * settings.review_every_s),
        **review_schedule(settings.review_every_s),
    )
    return build_worker(
        Queue.DB,
        [jobs.write_variant_flags, jobs.recalculate_rating],
        settings,
        on_startup=_open_db,
        on_shutdown=_close_db,
        max_jobs=settings.light_max_jobs,
        job_timeout_s=60,
        cron_jobs=[reviews],
    )


IqdbWorkerSettings = iqdb_worker_settings(get_settings())
DbWorkerSettings = db_worker_settings(get_settings())
