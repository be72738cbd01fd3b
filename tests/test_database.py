"""Database work of the light side, on MariaDB and SQLite."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from fleet.db import ImageStatus, admin_actions, image_reviews, images
from fleet.errors import PermanentError
from ratingworker import database
from tests.board import add_images, add_review, add_votes, row


async def test_variant_flags_are_written_and_unknown_images_refused(db: AsyncEngine) -> None:
    await add_images(db, 1, medium=2, large=2)
    await database.write_variant_flags(db, 1, medium=1, large=0)
    got = await row(db, images, image_id=1)
    assert (got["medium"], got["large"]) == (1, 0)
    with pytest.raises(PermanentError, match="no image 99"):
        await database.write_variant_flags(db, 99, 1, 1)


async def test_prior_defaults_when_nobody_voted(db: AsyncEngine) -> None:
    assert await database.global_prior(db) == database.Prior(10.0, 5.0)


async def test_bayesian_rating_matches_the_formula(db: AsyncEngine) -> None:
    await add_images(db, 1, 2, 3)
    votes = {1: [10, 9, 8], 2: [2], 3: []}
    for image_id, ratings in votes.items():
        await add_votes(db, image_id, ratings, first_user=100 * image_id)
    prior = await database.global_prior(db)
    all_votes = [r for rs in votes.values() for r in rs]
    assert prior.weight == pytest.approx(len(all_votes) / 2)  # 4 votes over 2 rated images
    assert prior.mean == pytest.approx(sum(all_votes) / len(all_votes))
    for image_id, ratings in votes.items():
        await database.recalculate_rating(db, image_id, prior)
        got = await row(db, images, image_id=image_id)
        n = len(ratings)
        assert got["num_ratings"] == n
        if n == 0:
            assert (got["rating"], got["bayesian_rating"]) == (0.0, 0.0)
            continue
        mean = sum(ratings) / n
        assert got["rating"] == pytest.approx(mean, rel=1e-5)
        expected = (prior.weight * prior.mean + n * mean) / (prior.weight + n)
        assert got["bayesian_rating"] == pytest.approx(expected, rel=1e-5)


async def test_reviews_past_deadline_are_settled_by_the_rules(db: AsyncEngine) -> None:
    now = datetime(2026, 11, 29, 12, 0, 0)
    past, future = now - timedelta(hours=1), now + timedelta(days=1)
    await add_images(db, *range(1, 8), status=ImageStatus.REVIEW)
    await add_review(db, 1, 1, past, [1, 1, 0])  # quorum, keep wins
    await add_review(db, 2, 2, past, [0, 0, 0, 1])  # quorum, remove wins
    await add_review(db, 3, 3, past, [1, 0])  # below quorum: extend
    await add_review(db, 4, 4, past, [1, 1, 0, 0])  # tie: extend
    await add_review(db, 5, 5, past, [0], extension_used=1)  # already extended: keep
    await add_review(db, 6, 6, future, [0, 0, 0])  # not due
    await add_review(db, 7, 7, past, [0, 0, 0, 0], extension_used=1)  # extended, then quorum: remove

    run = await database.close_expired_reviews(db, now, quorum=3, extension=timedelta(days=3))
    assert (run.closed_keep, run.closed_remove, run.extended, run.errors) == (2, 2, 2, 0)

    expect = {1: (1, 1), 2: (1, 2), 3: (0, 0), 4: (0, 0), 5: (1, 1), 6: (0, 0), 7: (1, 2)}
    for review_id, (status, outcome) in expect.items():
        got = await row(db, image_reviews, review_id=review_id)
        assert (got["status"], got["outcome"]) == (status, outcome), review_id
    for review_id in (3, 4):
        got = await row(db, image_reviews, review_id=review_id)
        assert got["extension_used"] == 1 and got["deadline"] == now + timedelta(days=3)
    statuses = {i: (await row(db, images, image_id=i))["status"] for i in range(1, 8)}
    active, removed, review = ImageStatus.ACTIVE, ImageStatus.INAPPROPRIATE, ImageStatus.REVIEW
    assert statuses == {1: active, 2: removed, 3: review, 4: review, 5: active, 6: review, 7: removed}
    async with db.connect() as conn:
        actions = (await conn.execute(sa.select(admin_actions).order_by(admin_actions.c.review_id))).all()
    assert [(a.review_id, a.image_id, a.user_id, a.details["outcome"]) for a in actions] == [
        (1, 1, None, "keep"), (2, 2, None, "remove"), (5, 5, None, "keep"), (7, 7, None, "remove")
    ]  # fmt: skip

    again = await database.close_expired_reviews(db, now, quorum=3, extension=timedelta(days=3))
    assert (again.closed_keep, again.closed_remove, again.extended) == (0, 0, 0)


async def test_one_bad_review_does_not_block_the_others(db: AsyncEngine) -> None:
    now = datetime(2026, 11, 29, 12, 0, 0)
    await add_images(db, 1, 2, 3)
    for review_id in (1, 2, 3):
        await add_review(db, review_id, review_id, now - timedelta(hours=1), [1, 1, 1])
    # A row the database refuses to update, as a corrupt or locked row would be.
    async with db.begin() as conn:
        if conn.dialect.name == "sqlite":
            trigger = (
                "CREATE TRIGGER refuse_two BEFORE UPDATE ON image_reviews WHEN OLD.review_id = 2 "
                "BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        else:
            trigger = (
                "CREATE TRIGGER refuse_two BEFORE UPDATE ON image_reviews FOR EACH ROW "
                "IF OLD.review_id = 2 THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused'; END IF"
            )
        await conn.execute(sa.text(trigger))
    run = await database.close_expired_reviews(db, now, quorum=3, extension=timedelta(days=3))
    assert (run.closed_keep, run.errors) == (2, 1)
    assert [(await row(db, image_reviews, review_id=i))["status"] for i in (1, 2, 3)] == [1, 0, 1]
    assert (await row(db, images, image_id=2))[
        "status"
    ] == ImageStatus.ACTIVE  # untouched: savepoint rolled back
