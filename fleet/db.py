"""The board's tables, as fleet uses them, and the async engine.

Only the columns fleet reads or writes are declared: an existing board database has many
more, and fleet never requires them. ``create_schema`` is for tests and the demo; against a
real board the tables already exist. CPU workers never import this: every database write
happens in the light workers.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from fleet.settings import Settings

metadata = sa.MetaData()


def _unsigned(small: bool = False) -> sa.types.TypeEngine[int]:
    base: sa.types.TypeEngine[int] = sa.SmallInteger() if small else sa.Integer()
    mariadb = mysql.SMALLINT(unsigned=True) if small else mysql.INTEGER(unsigned=True)
    return base.with_variant(mariadb, "mysql", "mariadb")


_TINY = sa.SmallInteger().with_variant(mysql.TINYINT(), "mysql", "mariadb")

images = sa.Table(
    "images",
    metadata,
    sa.Column("image_id", _unsigned(), primary_key=True, autoincrement=True),
    sa.Column("filename", sa.String(120), nullable=False),
    sa.Column("ext", sa.String(10), nullable=False),
    sa.Column("width", _unsigned(small=True), nullable=False, server_default="0"),
    sa.Column("height", _unsigned(small=True), nullable=False, server_default="0"),
    sa.Column("medium", _TINY, nullable=False, server_default="0"),
    sa.Column("large", _TINY, nullable=False, server_default="0"),
    sa.Column("rating", sa.Float, nullable=False, server_default="0"),
    sa.Column("bayesian_rating", sa.Float, nullable=False, server_default="0", index=True),
    sa.Column("num_ratings", _unsigned(), nullable=False, server_default="0"),
    sa.Column("iqdb_hash", sa.String(533), nullable=True),
    sa.Column("status", _TINY, nullable=False, server_default="1"),
)

image_ratings = sa.Table(
    "image_ratings",
    metadata,
    sa.Column("user_id", _unsigned(), primary_key=True),
    sa.Column(
        "image_id",
        _unsigned(),
        sa.ForeignKey("images.image_id", ondelete="CASCADE"),
        primary_key=True,
        index=True,
    ),
    sa.Column("rating", _TINY, nullable=False),
    sa.Column("date", sa.DateTime, nullable=False, server_default=sa.func.now()),
)

image_reviews = sa.Table(
    "image_reviews",
    metadata,
    sa.Column("review_id", _unsigned(), primary_key=True, autoincrement=True),
    sa.Column("image_id", _unsigned(), sa.ForeignKey("images.image_id", ondelete="CASCADE"), nullable=False),
    sa.Column("deadline", sa.DateTime, nullable=False),
    sa.Column("extension_used", _TINY, nullable=False, server_default="0"),
    sa.Column("status", _TINY, nullable=False, server_default="0"),
    sa.Column("outcome", _TINY, nullable=False, server_default="0"),
    sa.Column("created_at", sa.DateTime, nullable=False, server_default=sa.func.now()),
    sa.Column("closed_at", sa.DateTime, nullable=True),
)

review_votes = sa.Table(
    "review_votes",
    metadata,
    sa.Column("review_id", _unsigned(), sa.ForeignKey("image_reviews.review_id"), primary_key=True),
    sa.Column("image_id", _unsigned(), nullable=False),
    sa.Column("user_id", _unsigned(), primary_key=True),
    sa.Column("vote", _TINY, nullable=False),
)

admin_actions = sa.Table(
    "admin_actions",
    metadata,
    sa.Column("action_id", _unsigned(), primary_key=True, autoincrement=True),
    sa.Column("user_id", _unsigned(), nullable=True),
    sa.Column("action_type", sa.String(32), nullable=False),
    sa.Column("review_id", _unsigned(), nullable=True),
    sa.Column("image_id", _unsigned(), nullable=True),
    sa.Column("details", sa.JSON, nullable=True),
    sa.Column("created_at", sa.DateTime, nullable=False, server_default=sa.func.now()),
)


class ImageStatus:
    REVIEW = -4
    LOW_QUALITY = -3
    INAPPROPRIATE = -2
    REPOST = -1
    DEACTIVATED = 0
    ACTIVE = 1
    SPOILER = 2


def create_engine(settings: Settings) -> AsyncEngine:
    if settings.database_url is None:
        raise ValueError("DATABASE_URL is not set (fleet commands fill in SQLite when it is missing)")
    url = sa.make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            # WAL: the API process and the workers read while one of them writes.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_async_engine(url, pool_size=5, max_overflow=5, pool_recycle=3600, pool_pre_ping=True)


async def create_schema(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
