"""Rows for the board's tables in tests."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from fleet.db import image_ratings, image_reviews, images, review_votes


async def add_images(engine: AsyncEngine, *ids: int, **columns: Any) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            sa.insert(images),
            [{"image_id": i, "filename": f"2025-01-01-{i}", "ext": "jpg", **columns} for i in ids],
        )


async def add_votes(engine: AsyncEngine, image_id: int, ratings: list[int], first_user: int = 1) -> None:
    if not ratings:
        return
    async with engine.begin() as conn:
        await conn.execute(
            sa.insert(image_ratings),
            [{"user_id": first_user + k, "image_id": image_id, "rating": r} for k, r in enumerate(ratings)],
        )


async def add_review(
    engine: AsyncEngine,
    review_id: int,
    image_id: int,
    deadline: datetime,
    votes: list[int],
    extension_used: int = 0,
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            sa.insert(image_reviews).values(
                review_id=review_id, image_id=image_id, deadline=deadline, extension_used=extension_used
            )
        )
        if votes:
            await conn.execute(
                sa.insert(review_votes),
                [
                    {"review_id": review_id, "image_id": image_id, "user_id": u, "vote": v}
                    for u, v in enumerate(votes)
                ],
            )


async def row(engine: AsyncEngine, table: sa.Table, **where: Any) -> Any:
    async with engine.connect() as conn:
        clause = sa.and_(*(table.c[k] == v for k, v in where.items()))
        return (await conn.execute(sa.select(table).where(clause))).one()._mapping
