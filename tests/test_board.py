"""fleet dropped into the board as it is: its real tables (today's on MariaDB and PostgreSQL,
the seed-era one on MariaDB), its codes, its files, real workers, real Redis and an in-test
IQDB server; the review cron run by the operator's command."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from fleet.board import AdminActionType, ImageStatus, ReviewOutcome, VariantStatus, utc_now
from fleet.client import FleetClient
from fleet.db import create_engine
from fleet.deadletters import DeadLetters
from fleet.errors import JobFailedError
from fleet.keys import queue_key
from fleet.registry import Queue
from fleet.settings import Settings
from imgworker.worker import worker_settings as img_worker_settings
from ratingworker.worker import db_worker_settings, iqdb_worker_settings
from tests import images as files
from tests.board import add_images, add_review, add_votes, row, rows
from tests.conftest import board_database, running_worker
from tests.iqdb_server import IqdbServer, fake_hash


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def drained(client: FleetClient, *queues: Queue) -> bool:
    """Every job of ``queues`` finished (arq keeps a job in its queue until it ends)."""
    counts = [await client.redis.zcard(queue_key(client.settings.namespace, q)) for q in queues]
    return not any(counts)


def fleet_command(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings.as_env()}
    return subprocess.run([sys.executable, "-m", "fleet", *args], env=env, capture_output=True, text=True)


@pytest.fixture
async def board(today_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(Settings(database_url=today_database_url))
    yield engine
    await engine.dispose()


async def test_a_day_on_todays_board(settings: Settings, today_database_url: str, board: AsyncEngine) -> None:
    """upload -> render -> flags READY/NONE -> IQDB -> votes -> rating -> an expired review
    closed with action type 5, the image status changed and its history row written."""
    with IqdbServer() as iqdb:
        settings = settings.replace(database_url=today_database_url, iqdb_url=iqdb.url)
        # Two uploads as the board stores them: the row (variants PENDING when over the edge,
        # every NOT NULL column given) and the original at fullsize/{filename}.{ext}.
        big = files.jpeg(settings.storage_path, "2026-11-29-1.jpg", 2600, 1800)
        small = files.jpeg(settings.storage_path, "2026-11-29-2.jpg", 900, 600)
        pending, none = VariantStatus.PENDING, VariantStatus.NONE
        await add_images(board, 1, filename=big[0], width=2600, height=1800, medium=pending, large=pending)
        await add_images(board, 2, filename=small[0], width=900, height=600, medium=none, large=none)
        workers = (
            img_worker_settings(settings),
            iqdb_worker_settings(settings),
            db_worker_settings(settings),
        )
        async with await FleetClient.connect(settings) as client, running_worker(*workers):
            for job in [await client.render_upload(1, *big), await client.render_upload(2, *small)]:
                assert (await job.result(timeout=60, poll_delay=0.02))["ok"] is True

            async def indexed() -> bool:
                posts = [r for r in iqdb.state.requests if r.method == "POST"]
                return len(posts) == 2 and await drained(client, Queue.IQDB, Queue.DB)

            await eventually(indexed)
            one, two = await row(board, "images", image_id=1), await row(board, "images", image_id=2)
            assert (one["medium"], one["large"]) == (VariantStatus.READY, VariantStatus.READY)
            assert (two["medium"], two["large"]) == (VariantStatus.NONE, VariantStatus.NONE)
            for image_id, name in ((1, big[0]), (2, small[0])):
                assert (settings.storage_path / "thumbs" / f"{name}.webp").is_file()
                jpeg = (settings.storage_path / "iqdb" / f"{name}.jpg").read_bytes()
                assert (await row(board, "images", image_id=image_id))["iqdb_hash"] == fake_hash(jpeg)

            await add_votes(board, 1, [9, 7, 8])
            rated = await client.recalculate_rating(1)
            assert rated is not None
            await rated.result(timeout=30, poll_delay=0.02)
            got = await row(board, "images", image_id=1)
            assert (got["num_ratings"], got["rating"]) == (3, pytest.approx(8.0))
            assert got["bayesian_rating"] == pytest.approx(8.0)  # the only rated image: prior m = 8

        # A moderator opened a review (status -4, as REVIEW_START sets it); three voted remove;
        # the deadline passed. The operator runs the cron now.
        async with board.begin() as conn:
            await conn.execute(sa.text("UPDATE images SET status = -4 WHERE image_id = 1"))
        await add_review(board, 1, 1, utc_now() - timedelta(hours=1), [0, 0, 0], reason_category=3)
        ran = fleet_command(settings, "cron", "close_expired_reviews")
        assert ran.returncode == 0, ran.stderr
        assert json.loads(ran.stdout.strip().splitlines()[-1]) == {
            "cron": "close_expired_reviews",
            "result": {"closed_keep": 0, "closed_remove": 1, "extended": 0},
        }
    review = await row(board, "image_reviews", review_id=1)
    assert (review["status"], review["outcome"]) == (1, ReviewOutcome.REMOVE)
    image = await row(board, "images", image_id=1)
    assert (image["status"], image["reason_category"]) == (ImageStatus.DEACTIVATED, 3)
    assert image["status_reason"] == "Removed by community review"
    [history] = await rows(board, "image_status_history", order_by="id")
    assert (history["image_id"], history["old_status"], history["new_status"]) == (1, -4, 0)
    assert (history["user_id"], history["review_id"]) == (None, 1)
    [action] = await rows(board, "admin_actions", order_by="action_id")
    assert (action["action_type"], action["user_id"], action["review_id"]) == (
        AdminActionType.REVIEW_CLOSE,
        None,
        1,
    )
    details = action["details"] if isinstance(action["details"], dict) else json.loads(action["details"])
    assert details["close_reason"] == "quorum_reached" and details["automatic"] is True
    # Times are naive UTC, as the board stores them: within a minute of now, not hours off.
    assert abs((action["created_at"] - utc_now()).total_seconds()) < 60


async def test_iqdb_on_a_seed_era_board_indexes_once_without_storing_a_hash(
    settings: Settings, request: pytest.FixtureRequest
) -> None:
    async with board_database(request, "mariadb-seed") as url:
        engine = create_engine(Settings(database_url=url))
        try:
            await add_images(engine, 1)
            with IqdbServer() as iqdb:
                settings = settings.replace(database_url=url, iqdb_url=iqdb.url)
                (settings.storage_path / "iqdb").mkdir()
                (settings.storage_path / "iqdb" / "a.jpg").write_bytes(
                    files.pattern(64, 64).jpegsave_buffer()
                )
                async with (
                    await FleetClient.connect(settings) as client,
                    running_worker(iqdb_worker_settings(settings)),
                ):
                    job = await client.index_iqdb(1, "iqdb/a.jpg")
                    result = await job.result(timeout=30, poll_delay=0.02)
                    info = await job.result_info()
                posts = [r for r in iqdb.state.requests if r.method == "POST"]
        finally:
            await engine.dispose()
    assert result == {"image_id": 1, "hash_chars": len(fake_hash(posts[0].file or b"")), "hash_stored": False}
    assert info is not None and info.job_try == 1 and len(posts) == 1  # no retry, no second POST


async def test_a_schema_error_is_a_dead_letter_naming_the_sql_error(
    settings: Settings, board: AsyncEngine
) -> None:
    """A column the job needs is gone (a board migrated past fleet): no retries, one dead
    letter with the database's own words."""
    await add_images(board, 1)
    async with board.begin() as conn:
        await conn.execute(sa.text("ALTER TABLE images DROP COLUMN large"))
    settings = settings.replace(
        database_url=str(board.url.render_as_string(hide_password=False)), max_tries=5
    )
    async with await FleetClient.connect(settings) as client, running_worker(db_worker_settings(settings)):
        job = await client.write_variant_flags(1, medium=1, large=0)
        with pytest.raises(JobFailedError) as failure:
            await job.result(timeout=30, poll_delay=0.02)
        info = await job.result_info()
        letters = await DeadLetters(client.redis, settings.namespace, settings.dead_letter_ttl_s).list("db")
    assert failure.value.error_type == "DatabaseSchemaError"
    assert "large" in failure.value.message and failure.value.message.startswith("database: ")
    assert info is not None and info.job_try == 1
    assert [(letter.function, letter.error_type) for letter in letters] == [
        ("write_variant_flags", "DatabaseSchemaError")
    ]


async def test_a_cron_run_the_database_refuses_is_a_dead_letter_and_the_worker_lives_on(
    settings: Settings, board: AsyncEngine
) -> None:
    """A JobError out of an arq cron job would end its task unrecorded; fleet's crons end
    like every job: here a review whose audit row cannot be written fails the run for good."""
    await add_images(board, 1, status=ImageStatus.REVIEW)
    await add_review(board, 1, 1, utc_now() - timedelta(hours=1), [1, 1, 1])
    async with board.begin() as conn:
        await conn.execute(sa.text("DROP TABLE admin_actions"))
    settings = settings.replace(
        database_url=str(board.url.render_as_string(hide_password=False)), review_every_s=1
    )
    async with await FleetClient.connect(settings) as client, running_worker(db_worker_settings(settings)):
        letters = DeadLetters(client.redis, settings.namespace, settings.dead_letter_ttl_s)

        async def dead_lettered() -> bool:
            return bool(await letters.list("db"))

        await eventually(dead_lettered, timeout_s=30)
        letter = (await letters.list("db"))[0]
        await add_images(board, 2)  # the worker still serves its queue
        job = await client.write_variant_flags(2, medium=0, large=0)
        await job.result(timeout=30, poll_delay=0.02)
    assert (letter.function, letter.error_type) == ("close_expired_reviews", "DatabaseSchemaError")
    assert "admin_actions" in letter.message
    assert (await row(board, "image_reviews", review_id=1))["status"] == 0  # rolled back, still open
