"""Database work of the light side: variant flags, ratings, review deadlines.

Each function takes an engine and plain values, so it is tested directly on MariaDB and
SQLite; the job adapters in ``jobs.py`` only translate payloads and errors.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from fleet.db import ImageStatus, admin_actions, image_ratings, image_reviews, images, review_votes
from fleet.errors import PermanentError, TransientError

log = logging.getLogger("ratingworker.database")


@contextlib.contextmanager
def db_errors() -> Iterator[None]:
    """Connection loss, lock waits and deadlocks pass: retry. Anything else propagates."""
    try:
        yield
    except (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError) as exc:
        raise TransientError(f"database: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc


async def write_variant_flags(engine: AsyncEngine, image_id: int, medium: int, large: int) -> None:
    with db_errors():
        async with engine.begin() as conn:
            done = await conn.execute(
                sa.update(images).where(images.c.image_id == image_id).values(medium=medium, large=large)
            )
    if done.rowcount == 0:
        raise PermanentError(f"no image {image_id}", kind="UnknownImage")


async def store_iqdb_hash(engine: AsyncEngine, image_id: int, digest: str | None) -> None:
    with db_errors():
        async with engine.begin() as conn:
            await conn.execute(
                sa.update(images).where(images.c.image_id == image_id).values(iqdb_hash=digest)
            )


# --- ratings ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Prior:
    """The Bayesian prior: C (mean ratings per rated image) and m (global mean rating)."""

    weight: float
    mean: float


async def global_prior(engine: AsyncEngine) -> Prior:
    r = image_ratings.c
    with db_errors():
        async with engine.connect() as conn:
            count, images_rated, mean = (
                await conn.execute(
                    sa.select(sa.func.count(), sa.func.count(sa.distinct(r.image_id)), sa.func.avg(r.rating))
                )
            ).one()
    weight = count / images_rated if images_rated else 10.0
    return Prior(float(weight), float(mean) if mean is not None else 5.0)


async def recalculate_rating(engine: AsyncEngine, image_id: int, prior: Prior) -> None:
    """num_ratings, mean and Bayesian rating in one UPDATE.

    One statement, reading the votes as it writes: when two recalculations of an image
    overlap, the one that commits last has read every vote committed before it, so a
    late-starting recalculation can never be overwritten by an older one's stale numbers."""
    r = image_ratings.c

    def of_image(*columns: sa.ColumnElement[Any]) -> sa.ScalarSelect[Any]:
        return sa.select(*columns).where(r.image_id == image_id).scalar_subquery()

    n, total = sa.func.count(), sa.func.sum(r.rating)
    bayesian = sa.case((n > 0, (prior.weight * prior.mean + total) / (prior.weight + n)), else_=0.0)
    with db_errors():
        async with engine.begin() as conn:
            done = await conn.execute(
                sa.update(images)
                .where(images.c.image_id == image_id)
                .values(
                    num_ratings=of_image(n),
                    rating=of_image(sa.func.coalesce(sa.func.avg(r.rating), 0.0)),
                    bayesian_rating=of_image(bayesian),
                )
            )
    if done.rowcount == 0:
        raise PermanentError(f"no image {image_id}", kind="UnknownImage")


# --- review deadlines ---------------------------------------------------------------------------

KEEP, REMOVE = 1, 2  # image_reviews.outcome
OPEN, CLOSED = 0, 1  # image_reviews.status


@dataclass
class ReviewRun:
    closed_keep: int = 0
    closed_remove: int = 0
    extended: int = 0
    errors: int = 0


async def close_expired_reviews(
    engine: AsyncEngine, now: datetime, quorum: int, extension: timedelta
) -> ReviewRun:
    """Settle open reviews past their deadline, each in its own savepoint.

    Quorum and no tie: close with the majority. Otherwise extend once; after the extension,
    close as keep."""
    run = ReviewRun()
    rv = image_reviews.c
    with db_errors():
        async with engine.begin() as conn:
            due = (
                await conn.execute(
                    sa.select(rv.review_id, rv.image_id, rv.extension_used)
                    .where(rv.status == OPEN, rv.deadline < now)
                    .order_by(rv.review_id)
                )
            ).all()
            for review_id, image_id, extension_used in due:
                try:
                    async with conn.begin_nested():
                        await _settle(
                            conn, run, review_id, image_id, bool(extension_used), now, quorum, extension
                        )
                except sa.exc.DBAPIError as exc:
                    run.errors += 1
                    log.error("review %s not settled: %s", review_id, str(exc).splitlines()[0])
    return run


async def _settle(
    conn: AsyncConnection,
    run: ReviewRun,
    review_id: int,
    image_id: int,
    extension_used: bool,
    now: datetime,
    quorum: int,
    extension: timedelta,
) -> None:
    v = review_votes.c
    keep, remove = (
        await conn.execute(
            sa.select(
                sa.func.coalesce(sa.func.sum(sa.case((v.vote == 1, 1), else_=0)), 0),
                sa.func.coalesce(sa.func.sum(sa.case((v.vote == 0, 1), else_=0)), 0),
            ).where(v.review_id == review_id)
        )
    ).one()
    keep, remove = int(keep), int(remove)
    if keep + remove >= quorum and keep != remove:
        outcome = KEEP if keep > remove else REMOVE
    elif not extension_used:
        await conn.execute(
            sa.update(image_reviews)
            .where(image_reviews.c.review_id == review_id)
            .values(deadline=now + extension, extension_used=1)
        )
        run.extended += 1
        return
    else:
        outcome = KEEP
    await conn.execute(
        sa.update(image_reviews)
        .where(image_reviews.c.review_id == review_id)
        .values(status=CLOSED, outcome=outcome, closed_at=now)
    )
    status = ImageStatus.ACTIVE if outcome == KEEP else ImageStatus.INAPPROPRIATE
    await conn.execute(sa.update(images).where(images.c.image_id == image_id).values(status=status))
    await conn.execute(
        sa.insert(admin_actions).values(
            user_id=None,
            action_type="review_closed",
            review_id=review_id,
            image_id=image_id,
            details={
                "outcome": "keep" if outcome == KEEP else "remove",
                "keep_votes": keep,
                "remove_votes": remove,
            },
            created_at=now,
        )
    )
    if outcome == KEEP:
        run.closed_keep += 1
    else:
        run.closed_remove += 1
