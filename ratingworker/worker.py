"""The light workers: one for IQDB (``fleet worker iqdb``), one for the database
(``fleet worker db``), each with its own queue, scaled and measured on its own. No process
pool: every job waits on I/O. Stock CLI: ``arq ratingworker.worker.IqdbWorkerSettings``
and ``arq ratingworker.worker.DbWorkerSettings``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from arq.cron import CronJob
from sqlalchemy.ext.asyncio import AsyncEngine

from fleet.db import SchemaProbe, classify_db_error, create_engine
from fleet.errors import FleetError, TransientError
from fleet.health import ReplicaStats
from fleet.registry import CRON_JOBS, Queue
from fleet.settings import Settings, get_settings
from fleet.worker import Handler, Hook, build_worker, fleet_cron
from ratingworker import jobs
from ratingworker.iqdb import IqdbClient
from ratingworker.jobs import LightContext

log = logging.getLogger("ratingworker")


async def _open_db(ctx: LightContext) -> None:
    """The engine, and the board's schema probed now (its missing optional columns are
    logged once); a database away at start-up is probed again at the first job. A worker
    (not a one-off ``fleet cron``) also watches the database for its health checks."""
    ctx["db"] = create_engine(ctx["settings"])
    ctx["schema"] = SchemaProbe(ctx["db"])
    try:
        await ctx["schema"].get()
    except TransientError as exc:
        log.warning("database not reachable at start-up (%s); its schema is read at the first job", exc)
    if "stats" in ctx:
        ctx["db_watch"] = asyncio.create_task(_watch_database(ctx["db"], ctx["stats"], ctx["settings"]))


async def _close_db(ctx: LightContext) -> None:
    if "db_watch" in ctx:
        ctx["db_watch"].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ctx["db_watch"]
    if "db" in ctx:
        await ctx["db"].dispose()


async def _watch_database(engine: AsyncEngine, stats: ReplicaStats, settings: Settings) -> None:
    """``SELECT 1`` twice per health interval: a replica whose database is unreachable keeps
    beating but reports the problem, so ``fleet health`` fails instead of saying ok while
    every database job dead-letters."""
    while True:
        try:
            async with asyncio.timeout(settings.health_interval_s), engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - reported through the heartbeat, then tried again
            if stats.problem is None:
                log.warning("database unreachable: %s", classify_db_error(exc))
            stats.problem = f"database unreachable: {classify_db_error(exc)}"
        else:
            if stats.problem is not None:
                log.warning("database reachable again")
            stats.problem = None
        await asyncio.sleep(settings.health_interval_s / 2)


def iqdb_worker_settings(settings: Settings) -> dict[str, Any]:
    async def startup(ctx: LightContext) -> None:
        await _open_db(ctx)
        if settings.iqdb_url:
            ctx["iqdb"] = IqdbClient(settings.iqdb_url, settings.iqdb_timeout_s)
            ctx["jpegs"] = jobs.JpegSource.for_settings(settings)
        else:
            log.warning("IQDB_URL is not set: IQDB indexing is switched off")

    async def shutdown(ctx: LightContext) -> None:
        if "iqdb" in ctx:
            await ctx["iqdb"].aclose()
        await _close_db(ctx)

    handlers: list[Handler[Any, LightContext]] = [jobs.index_iqdb, jobs.delete_from_iqdb]
    return _light_worker(Queue.IQDB, handlers, settings, (startup, shutdown), settings.iqdb_timeout_s * 3)


def review_schedule(every_s: int) -> dict[str, Any]:
    """arq cron fields for "every ``every_s`` seconds" (a divisor of a minute, hour or day)."""
    if every_s < 60:
        return {"second": set(range(0, 60, every_s)), "minute": None}
    if every_s < 3600:
        return {"minute": set(range(0, 60, every_s // 60)), "second": 0}
    return {"hour": set(range(0, 24, every_s // 3600)), "minute": 0, "second": 0}


def cron_jobs(settings: Settings) -> list[CronJob]:
    """The database cron jobs, each once per slot across every replica."""
    reviews = fleet_cron(
        jobs.close_expired_reviews,
        name="close_expired_reviews",
        settings=settings,
        period_s=settings.review_every_s,
        **review_schedule(settings.review_every_s),
    )
    prune = fleet_cron(
        jobs.prune_admin_actions,
        name="prune_admin_actions",
        settings=settings,
        period_s=86400,
        hour={4},
        minute=17,
        second=0,
    )
    return [reviews, prune]


def db_worker_settings(settings: Settings) -> dict[str, Any]:
    handlers: list[Handler[Any, LightContext]] = [jobs.write_variant_flags, jobs.recalculate_rating]
    return _light_worker(Queue.DB, handlers, settings, (_open_db, _close_db), 60, cron_jobs(settings))


def _light_worker(
    queue: Queue,
    handlers: list[Handler[Any, LightContext]],
    settings: Settings,
    hooks: tuple[Hook[LightContext], Hook[LightContext]],
    job_timeout_s: float,
    crons: Sequence[CronJob] = (),
) -> dict[str, Any]:
    """A light queue's worker: LIGHT_MAX_JOBS jobs at once, each waiting on I/O; ``hooks``:
    start-up and shutdown."""
    return build_worker(
        queue,
        handlers,
        settings,
        on_startup=hooks[0],
        on_shutdown=hooks[1],
        max_jobs=settings.light_max_jobs,
        job_timeout_s=job_timeout_s,
        cron_jobs=crons,
    )


async def run_cron_once(name: str, settings: Settings) -> Any:
    """Run one cron job now, in this process (``fleet cron NAME``): for operators and tests."""
    if name not in CRON_JOBS:
        raise FleetError(f"no cron job {name!r}; there are {', '.join(sorted(CRON_JOBS))}")
    ctx: LightContext = {"settings": settings}
    await _open_db(ctx)
    try:
        return await getattr(jobs, name)(ctx)
    finally:
        await _close_db(ctx)


IqdbWorkerSettings = iqdb_worker_settings(get_settings())
DbWorkerSettings = db_worker_settings(get_settings())
