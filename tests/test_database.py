"""Database work of the light side, on the board's real tables: the seed-era board (MariaDB),
today's board (MariaDB strict, PostgreSQL without server defaults), and the demo's SQLite."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from fleet.board import AdminActionType, ImageStatus
from fleet.db import BoardSchema, create_engine, db_errors, probe_schema
from fleet.errors import PermanentError, TransientError
from fleet.services import free_port
from fleet.settings import Settings
from ratingworker import database
from tests.board import PENDING_VARIANTS, add_images, add_review, add_votes, insert, row, rows


def details_of(action: Any) -> dict[str, Any]:
    """``admin_actions.details``: JSON text on MariaDB (longtext), a dict elsewhere."""
    details = action["details"]
    return json.loads(details) if isinstance(details, str) else dict(details)


@pytest.fixture
async def schema(db: AsyncEngine) -> BoardSchema:
    return await probe_schema(db)


def today(schema: BoardSchema) -> bool:
    """Today's board (status history, reasons); False for the seed-era one."""
    return schema.can("status_history")


async def test_the_schema_probe_names_what_a_board_lacks(
    schema: BoardSchema, request: pytest.FixtureRequest
) -> None:
    missing = schema.missing_optional()
    if request.node.callspec.params["database_url"] == "mariadb-seed":
        assert [line.split(" ", 1)[0] for line in missing] == [
            "iqdb_hash", "r2_location", "status_history", "removal_reasons"
        ]  # fmt: skip
        assert "image_status_history missing" in missing[2]
    else:
        assert missing == []


async def test_variant_flags_are_written_and_unknown_images_refused(db: AsyncEngine) -> None:
    await add_images(db, 1, **PENDING_VARIANTS)
    await database.write_variant_flags(db, 1, medium=1, large=0)
    got = await row(db, "images", image_id=1)
    assert (got["medium"], got["large"]) == (1, 0)
    with pytest.raises(PermanentError, match="no image 99"):
        await database.write_variant_flags(db, 99, 1, 1)


async def test_iqdb_hash_is_stored_only_where_the_column_exists(db: AsyncEngine, schema: BoardSchema) -> None:
    await add_images(db, 1)
    stored = await database.store_iqdb_hash(db, schema, 1, "h" * 533)
    assert stored == schema.can("iqdb_hash")
    if stored:
        assert (await row(db, "images", image_id=1))["iqdb_hash"] == "h" * 533


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
        got = await row(db, "images", image_id=image_id)
        n = len(ratings)
        assert got["num_ratings"] == n
        if n == 0:
            assert (got["rating"], got["bayesian_rating"]) == (0.0, 0.0)
            continue
        mean = sum(ratings) / n
        assert got["rating"] == pytest.approx(mean, rel=1e-5)
        expected = (prior.weight * prior.mean + n * mean) / (prior.weight + n)
        assert got["bayesian_rating"] == pytest.approx(expected, rel=1e-5)


async def test_reviews_past_deadline_are_settled_as_the_board_settles_them(
    db: AsyncEngine, schema: BoardSchema
) -> None:
    now = datetime(2026, 11, 29, 12, 0, 0)
    past, future = now - timedelta(hours=1), now + timedelta(days=1)
    await add_images(db, *range(1, 8), status=ImageStatus.REVIEW)
    reasons = {"reason_category": 3, "reason": "spam ring"} if today(schema) else {}
    await add_review(db, 1, 1, past, [1, 1, 0])  # quorum, keep wins
    await add_review(db, 2, 2, past, [0, 0, 0, 1], **reasons)  # quorum, remove wins
    await add_review(db, 3, 3, past, [1, 0])  # below quorum: extend
    await add_review(db, 4, 4, past, [1, 1, 0, 0])  # tie: extend
    await add_review(db, 5, 5, past, [0], extension_used=1)  # already extended: keep
    await add_review(db, 6, 6, future, [0, 0, 0])  # not due
    await add_review(db, 7, 7, past, [0, 0, 0, 0], extension_used=1)  # extended, then quorum: remove

    run = await database.close_expired_reviews(db, schema, now, quorum=3, extension=timedelta(days=3))
    assert (run.closed_keep, run.closed_remove, run.extended, run.errors) == (2, 2, 2, 0)

    expect = {1: (1, 1), 2: (1, 2), 3: (0, 0), 4: (0, 0), 5: (1, 1), 6: (0, 0), 7: (1, 2)}
    for review_id, (status, outcome) in expect.items():
        got = await row(db, "image_reviews", review_id=review_id)
        assert (got["status"], got["outcome"]) == (status, outcome), review_id
        assert (got["closed_at"] == now) == (status == 1)
    for review_id in (3, 4):
        got = await row(db, "image_reviews", review_id=review_id)
        assert got["extension_used"] == 1 and got["deadline"] == now + timedelta(days=3)

    removed = ImageStatus.DEACTIVATED if today(schema) else ImageStatus.INAPPROPRIATE
    active, review = ImageStatus.ACTIVE, ImageStatus.REVIEW
    statuses = {i: (await row(db, "images", image_id=i))["status"] for i in range(1, 8)}
    assert statuses == {1: active, 2: removed, 3: review, 4: review, 5: active, 6: review, 7: removed}
    two = await row(db, "images", image_id=2)
    assert (two["status_user_id"], two["status_updated"]) == (None, now)
    if today(schema):
        assert (two["reason_category"], two["status_reason"]) == (3, "spam ring")
        seven = await row(db, "images", image_id=7)
        assert (seven["reason_category"], seven["status_reason"]) == (1, "Removed by community review")

    actions = await rows(db, "admin_actions", order_by="action_id")
    assert all(a["user_id"] is None and a["created_at"] == now for a in actions)
    by_review = {(a["review_id"], a["action_type"]): details_of(a) for a in actions}
    close, extend = AdminActionType.REVIEW_CLOSE, AdminActionType.REVIEW_EXTEND
    assert sorted(by_review) == [(1, close), (2, close), (3, extend), (4, extend), (5, close), (7, close)]
    assert by_review[(1, close)] == {
        "outcome": 1, "outcome_label": "keep", "close_reason": "quorum_reached", "automatic": True,
        "previous_status": -4, "new_status": 1, "previous_locked": 0, "new_locked": 0,
        "replacement_id": None, "reason_category": None, "reason": None,
    }  # fmt: skip
    assert by_review[(5, close)]["close_reason"] == "default_after_extension"
    assert by_review[(2, close)] | {"reason_category": 0, "reason": ""} == {
        "outcome": 2, "outcome_label": "remove", "close_reason": "quorum_reached", "automatic": True,
        "previous_status": -4, "new_status": int(removed), "previous_locked": 0, "new_locked": 0,
        "replacement_id": None, "reason_category": 0, "reason": "",
    }  # fmt: skip
    assert by_review[(3, extend)] == {
        "reason": "deadline_expired_auto_extend",
        "extension_days": 3,
        "new_deadline": (now + timedelta(days=3)).replace(tzinfo=UTC).isoformat(),
        "automatic": True,
    }

    if today(schema):
        history = await rows(db, "image_status_history", order_by="id")
        got_history = [
            (h["image_id"], h["old_status"], h["new_status"], h["user_id"], h["review_id"], h["reason"])
            for h in history
        ]
        assert got_history == [
            (1, -4, 1, None, 1, None),
            (2, -4, 0, None, 2, "spam ring"),
            (5, -4, 1, None, 5, None),
            (7, -4, 0, None, 7, "Removed by community review"),
        ]

    again = await database.close_expired_reviews(db, schema, now, quorum=3, extension=timedelta(days=3))
    assert (again.closed_keep, again.closed_remove, again.extended) == (0, 0, 0)


async def test_a_kept_image_already_active_gets_no_history_row(today_database_url: str) -> None:
    engine = create_engine(Settings(database_url=today_database_url))
    try:
        now = datetime(2026, 11, 29, 12, 0, 0)
        await add_images(engine, 1, status=ImageStatus.ACTIVE)
        await add_review(engine, 1, 1, now - timedelta(hours=1), [1, 1, 1])
        schema = await probe_schema(engine)
        await database.close_expired_reviews(engine, schema, now, quorum=3, extension=timedelta(days=3))
        assert await rows(engine, "image_status_history", order_by="id") == []
        [action] = await rows(engine, "admin_actions", order_by="action_id")
    finally:
        await engine.dispose()
    assert action["action_type"] == AdminActionType.REVIEW_CLOSE


async def test_one_bad_review_does_not_block_the_others_and_fails_the_run(
    db: AsyncEngine, schema: BoardSchema
) -> None:
    now = datetime(2026, 11, 29, 12, 0, 0)
    await add_images(db, 1, 2, 3, status=ImageStatus.REVIEW)
    for review_id in (1, 2, 3):
        await add_review(db, review_id, review_id, now - timedelta(hours=1), [1, 1, 1])
    # A row the database refuses to update, as a corrupt or locked row would be.
    statements = {
        "sqlite": [
            "CREATE TRIGGER refuse_two BEFORE UPDATE ON image_reviews WHEN OLD.review_id = 2 "
            "BEGIN SELECT RAISE(ABORT, 'refused'); END"
        ],
        "mysql": [
            "CREATE TRIGGER refuse_two BEFORE UPDATE ON image_reviews FOR EACH ROW "
            "IF OLD.review_id = 2 THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused'; END IF"
        ],
        "postgresql": [
            "CREATE FUNCTION refuse_two() RETURNS trigger AS $$ BEGIN IF OLD.review_id = 2 THEN "
            "RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER refuse_two BEFORE UPDATE ON image_reviews FOR EACH ROW "
            "EXECUTE FUNCTION refuse_two()",
        ],
    }
    async with db.begin() as conn:
        for statement in statements[db.dialect.name]:
            await conn.execute(sa.text(statement))
    with pytest.raises(PermanentError, match=r"database: .*refused") as failure:
        await database.close_expired_reviews(db, schema, now, quorum=3, extension=timedelta(days=3))
    assert failure.value.error_type == "DatabaseError"
    assert [(await row(db, "image_reviews", review_id=i))["status"] for i in (1, 2, 3)] == [1, 0, 1]
    statuses = [(await row(db, "images", image_id=i))["status"] for i in (1, 2, 3)]
    assert statuses == [ImageStatus.ACTIVE, ImageStatus.REVIEW, ImageStatus.ACTIVE]  # savepoint rolled back


async def test_old_audit_rows_are_pruned_but_report_links_kept(db: AsyncEngine) -> None:
    now = datetime(2026, 11, 29, 12, 0, 0)
    old, recent = now - timedelta(days=731), now - timedelta(days=729)
    if db.dialect.name != "sqlite":  # the demo's copy has no image_reports table
        await insert(db, "image_reports", [{"report_id": 1}])
    await insert(
        db,
        "admin_actions",
        [
            {"action_type": 5, "created_at": old, "details": None},
            {"action_type": 6, "created_at": old, "details": None},
            {"action_type": 2, "created_at": old, "report_id": 1, "details": None},
            {"action_type": 5, "created_at": recent, "details": None},
        ],
    )
    assert await database.prune_admin_actions(db, now, timedelta(days=730)) == 2
    left = await rows(db, "admin_actions", order_by="action_id")
    assert [(a["action_type"], a["report_id"]) for a in left] == [(2, 1), (5, None)]
    assert await database.prune_admin_actions(db, now, timedelta(days=730)) == 0


async def test_schema_and_type_errors_are_permanent_and_name_the_sql_error(db: AsyncEngine) -> None:
    with pytest.raises(PermanentError) as unknown_column, db_errors():
        async with db.begin() as conn:
            await conn.execute(sa.text("UPDATE images SET no_such_column = 1"))
    assert unknown_column.value.error_type == "DatabaseSchemaError"
    assert "no_such_column" in str(unknown_column.value)
    with pytest.raises(PermanentError) as unknown_table, db_errors():
        async with db.begin() as conn:
            await conn.execute(sa.text("SELECT 1 FROM no_such_table"))
    assert unknown_table.value.error_type == "DatabaseSchemaError"
    if db.dialect.name != "sqlite":  # SQLite stores a string in an INTEGER column
        # What the seed's code did: action_type 'review_closed' into an INT (MariaDB 1366).
        with pytest.raises(PermanentError, match="database: ") as wrong_type, db_errors():
            async with db.begin() as conn:
                await conn.execute(
                    sa.text("INSERT INTO admin_actions (action_type) VALUES (:t)"), {"t": "review_closed"}
                )
        assert wrong_type.value.error_type == "DatabaseError"


async def test_an_unreachable_database_is_transient(server_database_url: str) -> None:
    url = sa.make_url(server_database_url).set(host="127.0.0.1", port=free_port())
    engine = create_engine(Settings(database_url=url.render_as_string(hide_password=False)))
    try:
        with pytest.raises(TransientError) as failure:
            await database.write_variant_flags(engine, 1, 1, 1)
    finally:
        await engine.dispose()
    assert failure.value.error_type == "DatabaseUnavailable"


async def test_a_lock_wait_is_transient(server_database_url: str) -> None:
    """A row held by another transaction past the lock timeout: retrying later will work."""
    engine = create_engine(Settings(database_url=server_database_url))
    try:
        await add_images(engine, 1)
        short = {
            "mysql": "SET SESSION innodb_lock_wait_timeout = 1",
            "postgresql": "SET lock_timeout = '200ms'",
        }[engine.dialect.name]
        async with engine.connect() as holder:
            await holder.begin()
            await holder.execute(sa.text("UPDATE images SET medium = 1 WHERE image_id = 1"))
            with pytest.raises(TransientError) as failure, db_errors():
                async with engine.begin() as conn:
                    await conn.execute(sa.text(short))
                    await conn.execute(sa.text("UPDATE images SET medium = 0 WHERE image_id = 1"))
            await holder.rollback()
    finally:
        await engine.dispose()
    assert failure.value.error_type == "DatabaseUnavailable"
