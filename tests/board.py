"""Rows in the board's tables, inserted the way the board inserts them.

The tables are reflected from the database under test (seed-era MariaDB, today's MariaDB or
PostgreSQL, the demo's SQLite), never taken from fleet's declarations: a column fleet does
not know is still filled, as PostgreSQL (no server defaults) requires of every NOT NULL one.
"""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from fleet.board import DeactivationReason, ImageStatus, ReviewOutcome, ReviewStatus, VariantStatus

UPLOAD_VALUES: dict[str, Any] = {
    "user_id": 1,
    "ip": "127.0.0.1",
    "status": ImageStatus.ACTIVE,
    "reason_category": DeactivationReason.INAPPROPRIATE,
}
"""What an upload or a moderator gives the required columns fleet does not care about."""

PENDING_VARIANTS: dict[str, Any] = {"medium": VariantStatus.PENDING, "large": VariantStatus.PENDING}
"""The variant flags of an upload over both edges, as the board inserts it: a render settles them."""


async def table(engine: AsyncEngine, name: str) -> sa.Table:
    async with engine.connect() as conn:
        return await conn.run_sync(lambda sync: sa.Table(name, sa.MetaData(), autoload_with=sync))


def _zero(column: sa.Column[Any]) -> Any:
    """The empty value of a required column with no server default."""
    if column.name in UPLOAD_VALUES:
        return UPLOAD_VALUES[column.name]
    python_type = column.type.python_type
    return {bool: False, str: ""}.get(python_type, 0)


async def insert(engine: AsyncEngine, name: str, rows: list[dict[str, Any]]) -> None:
    """Insert ``rows``, giving every required column without a server default a value."""
    reflected = await table(engine, name)
    required = [
        c
        for c in reflected.columns
        if not c.nullable and c.server_default is None and c is not reflected.autoincrement_column
    ]
    filled = [{**{c.name: _zero(c) for c in required if c.name not in row}, **row} for row in rows]
    async with engine.begin() as conn:
        # Rows naming the same columns go in one statement (an executemany takes the first
        # row's columns for all of them).
        for _, group in itertools.groupby(filled, key=lambda values: sorted(values)):
            await conn.execute(sa.insert(reflected), list(group))


async def add_images(engine: AsyncEngine, *ids: int, **columns: Any) -> None:
    await insert(
        engine,
        "images",
        [{"image_id": i, "filename": f"2025-01-01-{i}", "ext": "jpg", **columns} for i in ids],
    )
    await _advance_sequence(engine, "images", "image_id")


async def add_votes(engine: AsyncEngine, image_id: int, ratings: list[int], first_user: int = 1) -> None:
    if ratings:
        rows = [{"user_id": first_user + k, "image_id": image_id, "rating": r} for k, r in enumerate(ratings)]
        await insert(engine, "image_ratings", rows)


async def add_review(
    engine: AsyncEngine,
    review_id: int,
    image_id: int,
    deadline: datetime,
    votes: list[int],
    extension_used: int = 0,
    **columns: Any,
) -> None:
    review = {
        "review_id": review_id,
        "image_id": image_id,
        "deadline": deadline,
        "extension_used": extension_used,
    }
    await insert(
        engine,
        "image_reviews",
        [{**review, "status": ReviewStatus.OPEN, "outcome": ReviewOutcome.PENDING, **columns}],
    )
    await _advance_sequence(engine, "image_reviews", "review_id")
    if votes:
        await insert(
            engine,
            "review_votes",
            [
                {"review_id": review_id, "image_id": image_id, "user_id": u + 1, "vote": v}
                for u, v in enumerate(votes)
            ],
        )


async def _advance_sequence(engine: AsyncEngine, name: str, key: str) -> None:
    """PostgreSQL: rows given explicit ids leave the serial behind; move it past them."""
    if engine.dialect.name == "postgresql":
        async with engine.begin() as conn:
            sequence = f"pg_get_serial_sequence('{name}', '{key}')"
            await conn.execute(sa.text(f"SELECT setval({sequence}, (SELECT max({key}) FROM {name}))"))


async def row(engine: AsyncEngine, name: str | sa.Table, **where: Any) -> Any:
    """The one row of table ``name`` matching ``where``, every column of it."""
    reflected = await table(engine, name if isinstance(name, str) else name.name)
    async with engine.connect() as conn:
        clause = sa.and_(*(reflected.c[k] == v for k, v in where.items()))
        return (await conn.execute(sa.select(reflected).where(clause))).one()._mapping


async def rows(engine: AsyncEngine, name: str, order_by: str) -> list[Any]:
    reflected = await table(engine, name)
    async with engine.connect() as conn:
        found = await conn.execute(sa.select(reflected).order_by(reflected.c[order_by]))
        return [r._mapping for r in found.all()]
