"""Database work of the light side: variant flags, IQDB hashes, ratings, reviews, audit pruning.

Each function takes an engine, the board's probed schema where it matters, and plain values,
so it is tested directly on the board's tables (MariaDB seed-era and today, PostgreSQL,
SQLite for the demo); the job adapters in ``jobs.py`` only translate payloads. Rows are
written as the board itself writes them: its codes (:mod:`fleet.board`), its audit format,
naive UTC times.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from fleet.board import (
    EXTEND_REASON,
    REMOVED_BY_REVIEW,
    AdminActionType,
    CloseReason,
    ImageStatus,
    R2Location,
    ReviewOutcome,
    ReviewStatus,
    ReviewVote,
)
from fleet.db import (
    BoardSchema,
    admin_actions,
    classify_db_error,
    db_errors,
    image_ratings,
    image_reviews,
    image_status_history,
    images,
    review_votes,
)
from fleet.errors import PermanentError

log = logging.getLogger("ratingworker.database")


async def write_variant_flags(
    engine: AsyncEngine, image_id: int, medium: int, large: int, *, r2_location: int | None = None
) -> None:
    """The variant flags; with ``r2_location``, that too, but only from NONE (0), as the board's
    finalize job writes it: a status sync that already moved the image is never undone."""
    with db_errors():
        async with engine.begin() as conn:
            done = await conn.execute(
                sa.update(images).where(images.c.image_id == image_id).values(medium=medium, large=large)
            )
            if r2_location is not None:
                where = sa.and_(images.c.image_id == image_id, images.c.r2_location == int(R2Location.NONE))
                await conn.execute(sa.update(images).where(where).values(r2_location=r2_location))
    if done.rowcount == 0:
        raise PermanentError(f"no image {image_id}", error_type="UnknownImage")


async def store_iqdb_hash(
    engine: AsyncEngine, schema: BoardSchema, image_id: int, digest: str | None
) -> bool:
    """Record IQDB's hash; False (and nothing written) on a board without ``images.iqdb_hash``."""
    if not schema.can("iqdb_hash"):
        return False
    with db_errors():
        async with engine.begin() as conn:
            await conn.execute(
                sa.update(images).where(images.c.image_id == image_id).values(iqdb_hash=digest)
            )
    return True


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
    weight, mean = sa.literal(prior.weight, sa.Float), sa.literal(prior.mean, sa.Float)
    bayesian = sa.case((n > 0, (weight * mean + total) / (weight + n)), else_=sa.literal(0.0, sa.Float))
    with db_errors():
        async with engine.begin() as conn:
            done = await conn.execute(
                sa.update(images)
                .where(images.c.image_id == image_id)
                .values(
                    num_ratings=of_image(n),
                    rating=of_image(sa.func.coalesce(sa.func.avg(r.rating), sa.literal(0.0, sa.Float))),
                    bayesian_rating=of_image(bayesian),
                )
            )
    if done.rowcount == 0:
        raise PermanentError(f"no image {image_id}", error_type="UnknownImage")


# --- review deadlines ---------------------------------------------------------------------------


@dataclass
class ReviewRun:
    closed_keep: int = 0
    closed_remove: int = 0
    extended: int = 0
    errors: int = 0
    first_error: BaseException | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class _Review:
    review_id: int
    image_id: int
    extension_used: bool
    reason_category: int | None
    reason: str | None


async def close_expired_reviews(
    engine: AsyncEngine, schema: BoardSchema, now: datetime, quorum: int, extension: timedelta
) -> ReviewRun:
    """Settle open reviews past their deadline, as the board's own hourly job does.

    Quorum and no tie: close with the majority. Otherwise extend once; after the extension,
    close as keep. Each review is settled in its own savepoint, so one the database refuses
    does not hold back the others; the run then fails with that review's error (after the
    others are committed), so a broken review is retried or dead-lettered, never just logged."""
    run = ReviewRun()
    rv = image_reviews.c
    optional = [rv.reason_category, rv.reason] if schema.can("removal_reasons") else []
    with db_errors():
        async with engine.begin() as conn:
            due = (
                await conn.execute(
                    sa.select(rv.review_id, rv.image_id, rv.extension_used, *optional)
                    .where(rv.status == ReviewStatus.OPEN, rv.deadline < now)
                    .order_by(rv.review_id)
                )
            ).all()
            for found in due:
                values = found._mapping
                review = _Review(
                    values["review_id"],
                    values["image_id"],
                    bool(values["extension_used"]),
                    values.get("reason_category"),
                    values.get("reason"),
                )
                try:
                    async with conn.begin_nested():
                        await _settle(conn, schema, run, review, now, quorum, extension)
                except sa.exc.SQLAlchemyError as exc:
                    run.errors += 1
                    run.first_error = run.first_error or exc
                    log.error("review %s not settled: %s", review.review_id, str(exc).splitlines()[0])
    if run.first_error is not None:
        raise classify_db_error(run.first_error) from run.first_error
    return run


async def _vote_counts(conn: AsyncConnection, review_id: int) -> tuple[int, int]:
    v = review_votes.c
    rows = await conn.execute(
        sa.select(v.vote, sa.func.count(v.vote)).where(v.review_id == review_id).group_by(v.vote)
    )
    counts = {vote: int(n) for vote, n in rows.all()}
    return counts.get(ReviewVote.KEEP, 0), counts.get(ReviewVote.REMOVE, 0)


async def _settle(
    conn: AsyncConnection,
    schema: BoardSchema,
    run: ReviewRun,
    review: _Review,
    now: datetime,
    quorum: int,
    extension: timedelta,
) -> None:
    keep, remove = await _vote_counts(conn, review.review_id)
    if keep + remove >= quorum and keep != remove:
        outcome = ReviewOutcome.KEEP if keep > remove else ReviewOutcome.REMOVE
        await _close(conn, schema, review, outcome, CloseReason.QUORUM_REACHED, now)
    elif not review.extension_used:
        await _extend(conn, review, now, extension)
        run.extended += 1
        return
    else:
        outcome = ReviewOutcome.KEEP
        await _close(conn, schema, review, outcome, CloseReason.DEFAULT_AFTER_EXTENSION, now)
    if outcome == ReviewOutcome.KEEP:
        run.closed_keep += 1
    else:
        run.closed_remove += 1


async def _extend(conn: AsyncConnection, review: _Review, now: datetime, extension: timedelta) -> None:
    deadline = now + extension
    await conn.execute(
        sa.update(image_reviews)
        .where(image_reviews.c.review_id == review.review_id)
        .values(deadline=deadline, extension_used=1)
    )
    details = {
        "reason": EXTEND_REASON,
        "extension_days": extension.days,
        "new_deadline": deadline.replace(tzinfo=UTC).isoformat(),
        "automatic": True,
    }
    await _audit(conn, AdminActionType.REVIEW_EXTEND, review, details, now)


async def _close(
    conn: AsyncConnection,
    schema: BoardSchema,
    review: _Review,
    outcome: ReviewOutcome,
    close_reason: CloseReason,
    now: datetime,
) -> None:
    """Close the review and change the image's status, with the audit and history rows the
    board writes for an automatic close (system actor: ``user_id`` NULL)."""
    await conn.execute(
        sa.update(image_reviews)
        .where(image_reviews.c.review_id == review.review_id)
        .values(status=ReviewStatus.CLOSED, outcome=outcome, closed_at=now)
    )
    details: dict[str, Any] = {
        "outcome": int(outcome),
        "outcome_label": "keep" if outcome == ReviewOutcome.KEEP else "remove",
        "close_reason": str(close_reason),
        "automatic": True,
    }
    c = images.c
    image = (
        await conn.execute(
            sa.select(c.status, c.locked).where(c.image_id == review.image_id).with_for_update()
        )
    ).one_or_none()
    if image is not None:
        details |= await _change_status(conn, schema, review, outcome, image.status, image.locked, now)
    await _audit(conn, AdminActionType.REVIEW_CLOSE, review, details, now)


async def _change_status(
    conn: AsyncConnection,
    schema: BoardSchema,
    review: _Review,
    outcome: ReviewOutcome,
    old_status: int,
    locked: int,
    now: datetime,
) -> dict[str, Any]:
    """The image's new status; returns the audit's base keys, as the board records them.

    Today's board deactivates a removed image (status 0) with the review's reason; the
    seed-era board, without reason columns, marked it INAPPROPRIATE (-2)."""
    reasons = schema.can("removal_reasons")
    category: int | None = None
    reason: str | None = None
    if outcome == ReviewOutcome.KEEP:
        new_status = ImageStatus.ACTIVE
    elif reasons:
        new_status = ImageStatus.DEACTIVATED
        category, reason = review.reason_category, review.reason or REMOVED_BY_REVIEW
    else:
        new_status = ImageStatus.INAPPROPRIATE
    values: dict[str, Any] = {
        "status": new_status,
        "status_user_id": None,
        "status_updated": now,
        "replacement_id": None,
    }
    if reasons:
        values |= {"reason_category": category, "status_reason": reason}
    await conn.execute(sa.update(images).where(images.c.image_id == review.image_id).values(**values))
    if new_status != old_status and schema.can("status_history"):
        await conn.execute(
            sa.insert(image_status_history).values(
                image_id=review.image_id,
                old_status=old_status,
                new_status=new_status,
                user_id=None,
                reason_category=category,
                reason=reason,
                report_id=None,
                review_id=review.review_id,
                created_at=now,
            )
        )
    return {
        "previous_status": int(old_status),
        "new_status": int(new_status),
        "previous_locked": int(locked),
        "new_locked": int(locked),
        "replacement_id": None,
        "reason_category": category,
        "reason": reason,
    }


async def _audit(
    conn: AsyncConnection, action: AdminActionType, review: _Review, details: dict[str, Any], now: datetime
) -> None:
    await conn.execute(
        sa.insert(admin_actions).values(
            user_id=None,
            action_type=int(action),
            report_id=None,
            review_id=review.review_id,
            image_id=review.image_id,
            details=details,
            created_at=now,
        )
    )


# --- audit retention ----------------------------------------------------------------------------


async def prune_admin_actions(engine: AsyncEngine, now: datetime, retention: timedelta) -> int:
    """Delete audit rows older than ``retention``; returns how many.

    Rows tied to a report are kept: the board derives report resolutions from them."""
    a = admin_actions.c
    with db_errors():
        async with engine.begin() as conn:
            done = await conn.execute(
                sa.delete(admin_actions).where(a.created_at < now - retention, a.report_id.is_(None))
            )
    return int(done.rowcount or 0)
