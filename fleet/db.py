"""The board's tables as fleet uses them, the engine, what a board's schema has, and how a
database error ends a job.

fleet runs against the board's own database (MariaDB or PostgreSQL), whose tables its
migrations made; fleet never requires a column it does not use, and a few it uses exist only
on newer boards (``OPTIONAL``): they are probed once at start-up and their writes switched off
when missing. Only the columns fleet reads or writes are declared here. ``create_schema``
makes these tables (with MariaDB-like defaults) for the demo's SQLite and nothing else.
CPU workers never import this: every database write happens in the light workers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from fleet.errors import JobError, PermanentError, TransientError
from fleet.settings import Settings

log = logging.getLogger("fleet.db")

metadata = sa.MetaData()


def _serial(name: str) -> sa.Column[Any]:
    """An auto-increment primary key."""
    return sa.Column(name, sa.Integer, primary_key=True, autoincrement=True)


def _image_id(**options: Any) -> sa.Column[Any]:
    """``image_id`` of a row that belongs to an image, deleted with it."""
    return sa.Column("image_id", sa.Integer, sa.ForeignKey("images.image_id", ondelete="CASCADE"), **options)


def _stamped(name: str, **options: Any) -> sa.Column[Any]:
    """A time the database sets when the row is inserted (the board's ``created_at``, ``date``)."""
    return sa.Column(name, sa.DateTime, nullable=True, server_default=sa.func.current_timestamp(), **options)


images = sa.Table(
    "images",
    metadata,
    _serial("image_id"),
    sa.Column("filename", sa.String(120), nullable=True),
    sa.Column("ext", sa.String(10), nullable=False),
    sa.Column("width", sa.Integer, nullable=False, server_default="0"),
    sa.Column("height", sa.Integer, nullable=False, server_default="0"),
    sa.Column("status", sa.Integer, nullable=False, server_default="1"),
    sa.Column("locked", sa.Integer, nullable=False, server_default="0"),
    sa.Column("status_user_id", sa.Integer, nullable=True),
    sa.Column("status_updated", sa.DateTime, nullable=True),
    sa.Column("replacement_id", sa.Integer, nullable=True),
    sa.Column("medium", sa.Integer, nullable=False, server_default="0"),
    sa.Column("large", sa.Integer, nullable=False, server_default="0"),
    sa.Column("rating", sa.Float, nullable=False, server_default="0"),
    sa.Column("bayesian_rating", sa.Float, nullable=False, server_default="0", index=True),
    sa.Column("num_ratings", sa.Integer, nullable=False, server_default="0"),
    # Newer boards only (see OPTIONAL).
    sa.Column("iqdb_hash", sa.String(533), nullable=True),
    sa.Column("r2_location", sa.Integer, nullable=False, server_default="0"),
    sa.Column("reason_category", sa.Integer, nullable=True),
    sa.Column("status_reason", sa.String(1000), nullable=True),
)

image_ratings = sa.Table(
    "image_ratings",
    metadata,
    sa.Column("user_id", sa.Integer, primary_key=True),
    _image_id(primary_key=True, index=True),
    sa.Column("rating", sa.Integer, nullable=False),
    _stamped("date"),
)

image_reviews = sa.Table(
    "image_reviews",
    metadata,
    _serial("review_id"),
    _image_id(nullable=False),
    sa.Column("deadline", sa.DateTime, nullable=True),
    sa.Column("extension_used", sa.Integer, nullable=False, server_default="0"),
    sa.Column("status", sa.Integer, nullable=False, server_default="0"),
    sa.Column("outcome", sa.Integer, nullable=False, server_default="0"),
    _stamped("created_at"),
    sa.Column("closed_at", sa.DateTime, nullable=True),
    # Newer boards only (the seed-era board had review_type instead).
    sa.Column("reason_category", sa.Integer, nullable=False, server_default="1"),
    sa.Column("reason", sa.String(1000), nullable=True),
)

review_votes = sa.Table(
    "review_votes",
    metadata,
    _serial("vote_id"),
    sa.Column("image_id", sa.Integer, nullable=True),
    sa.Column("user_id", sa.Integer, nullable=True),
    sa.Column("vote", sa.Integer, nullable=True),
    sa.Column("review_id", sa.Integer, sa.ForeignKey("image_reviews.review_id"), nullable=True),
    _stamped("created_at"),
)

admin_actions = sa.Table(
    "admin_actions",
    metadata,
    _serial("action_id"),
    sa.Column("user_id", sa.Integer, nullable=True),
    sa.Column("action_type", sa.Integer, nullable=False, server_default="0"),
    sa.Column("report_id", sa.Integer, nullable=True),
    sa.Column("review_id", sa.Integer, nullable=True),
    sa.Column("image_id", sa.Integer, nullable=True),
    sa.Column("details", sa.JSON, nullable=True),
    _stamped("created_at", index=True),
)

image_status_history = sa.Table(
    "image_status_history",
    metadata,
    _serial("id"),
    _image_id(nullable=False),
    sa.Column("old_status", sa.Integer, nullable=False),
    sa.Column("new_status", sa.Integer, nullable=False),
    sa.Column("user_id", sa.Integer, nullable=True),
    _stamped("created_at"),
    sa.Column("reason_category", sa.Integer, nullable=True),
    sa.Column("reason", sa.String(1000), nullable=True),
    sa.Column("report_id", sa.Integer, nullable=True),
    sa.Column("review_id", sa.Integer, nullable=True),
)


@dataclass(frozen=True, slots=True)
class OptionalWrite:
    """A write fleet makes only on boards that have its columns (boards before 2026-05 lack
    all of these): probed once at start-up, switched off with one warning line otherwise."""

    name: str
    needs: tuple[tuple[str, str | None], ...]
    """(table, column), or (table, None) for the whole table."""
    without: str
    """What happens instead, for the warning."""


OPTIONAL = (
    OptionalWrite("iqdb_hash", (("images", "iqdb_hash"),), "IQDB hashes are not stored (IQDB is still told)"),
    OptionalWrite("r2_location", (("images", "r2_location"),), "r2_location is not updated"),
    OptionalWrite("status_history", (("image_status_history", None),), "no image_status_history rows"),
    OptionalWrite(
        "removal_reasons",
        (
            ("images", "reason_category"),
            ("images", "status_reason"),
            ("image_reviews", "reason_category"),
            ("image_reviews", "reason"),
        ),
        "a review's removal sets the seed-era status INAPPROPRIATE (-2), with no reason",
    ),
)


@dataclass(frozen=True, slots=True)
class BoardSchema:
    """Which tables and columns this board's database has, of those fleet uses."""

    columns: Mapping[str, frozenset[str]]

    def has(self, table: str, column: str | None = None) -> bool:
        present = self.columns.get(table)
        return present is not None and (column is None or column in present)

    def can(self, write: str) -> bool:
        """Whether the optional write ``write`` (an ``OPTIONAL`` name) is possible here."""
        [optional] = [o for o in OPTIONAL if o.name == write]
        return all(self.has(table, column) for table, column in optional.needs)

    def missing_optional(self) -> list[str]:
        """One line per write switched off, for the start-up warning."""
        lines = []
        for optional in OPTIONAL:
            missing = [f"{t}.{c}" if c else t for t, c in optional.needs if not self.has(t, c)]
            if missing:
                lines.append(f"{optional.name} off ({', '.join(missing)} missing): {optional.without}")
        return lines


async def probe_schema(engine: AsyncEngine) -> BoardSchema:
    """Read the columns of the tables fleet uses (one inspection, at start-up)."""

    def inspect(connection: sa.Connection) -> dict[str, frozenset[str]]:
        inspector = sa.inspect(connection)
        found = set(inspector.get_table_names())
        return {
            table.name: frozenset(c["name"] for c in inspector.get_columns(table.name))
            for table in metadata.sorted_tables
            if table.name in found
        }

    with db_errors():
        async with engine.connect() as conn:
            return BoardSchema(await conn.run_sync(inspect))


class SchemaProbe:
    """The board's schema, probed once: at start-up, or at the first job if the database was
    away then. Each write switched off is logged once, as a warning."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._schema: BoardSchema | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> BoardSchema:
        if self._schema is None:
            async with self._lock:
                if self._schema is None:
                    schema = await probe_schema(self.engine)
                    for line in schema.missing_optional():
                        log.warning("board schema: %s", line)
                    self._schema = schema
        return self._schema


# --- how a database error ends a job ----------------------------------------------------------

# MariaDB/MySQL error numbers worth retrying: lost or refused connections, server going away
# or shutting down, too many connections, lock wait timeout, deadlock, query interrupted.
_MYSQL_TRANSIENT = frozenset({1040, 1053, 1077, 1205, 1213, 1317, 1927, 2002, 2003, 2006, 2013, 2055})
_MYSQL_SCHEMA = frozenset({1054, 1146})  # unknown column, unknown table
# PostgreSQL SQLSTATEs (or classes) worth retrying: connection exceptions, insufficient
# resources, operator intervention (shutdown, cannot connect now), system errors,
# serialization failures, deadlocks, lock not available.
_PG_TRANSIENT = ("08", "53", "57", "58", "40001", "40P01", "55P03")
_PG_SCHEMA = ("42703", "42P01")  # undefined column, undefined table
_SQLITE_TRANSIENT = ("database is locked", "database table is locked", "disk i/o error", "unable to open")


def classify_db_error(exc: BaseException) -> JobError:
    """Transient (retry later) or permanent (dead letter naming the SQL error).

    Only failures that time can cure are transient: a lost connection, a deadlock, a lock
    wait. An unknown column, a value of the wrong type or a broken constraint fails the same
    way on every try, so it is permanent: retrying would only repeat the side effects
    before it (an IQDB upload, say) eight times."""
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    message = f"database: {first_line}"
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return TransientError(message, error_type="DatabaseUnavailable")
    if isinstance(exc, sa.exc.TimeoutError | sa.exc.DisconnectionError | OSError | asyncio.TimeoutError):
        return TransientError(message, error_type="DatabaseUnavailable")
    orig = getattr(exc, "orig", None)
    mysql_code = _mysql_code(orig)
    pg_code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if mysql_code is not None:
        if mysql_code in _MYSQL_TRANSIENT:
            return TransientError(message, error_type="DatabaseUnavailable")
        error_type = "DatabaseSchemaError" if mysql_code in _MYSQL_SCHEMA else "DatabaseError"
        return PermanentError(message, error_type=error_type)
    if isinstance(pg_code, str):
        if pg_code.startswith(_PG_TRANSIENT):
            return TransientError(message, error_type="DatabaseUnavailable")
        error_type = "DatabaseSchemaError" if pg_code in _PG_SCHEMA else "DatabaseError"
        return PermanentError(message, error_type=error_type)
    if isinstance(exc, sa.exc.OperationalError):  # SQLite and unknown drivers: by the message
        text = first_line.lower()
        if any(marker in text for marker in _SQLITE_TRANSIENT):
            return TransientError(message, error_type="DatabaseUnavailable")
        if "no such column" in text or "no such table" in text:
            return PermanentError(message, error_type="DatabaseSchemaError")
    if isinstance(exc, sa.exc.InterfaceError):
        return TransientError(message, error_type="DatabaseUnavailable")
    return PermanentError(message, error_type="DatabaseError")


def _mysql_code(orig: object) -> int | None:
    args = getattr(orig, "args", ())
    if type(orig).__module__.startswith("pymysql") and args and isinstance(args[0], int):
        return args[0]
    return None


class _DbErrors:
    """``with db_errors():`` turns a database failure into the job failure it means."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, sa.exc.SQLAlchemyError | OSError | asyncio.TimeoutError):
            raise classify_db_error(exc) from exc


def db_errors() -> _DbErrors:
    return _DbErrors()


# --- the engine -------------------------------------------------------------------------------


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
    connect_args: dict[str, Any] = {}
    if url.get_backend_name() in ("mysql", "mariadb"):
        # The board stores naive UTC and sets its sessions to UTC; so do we, so that
        # CURRENT_TIMESTAMP defaults agree with the times fleet writes.
        connect_args["init_command"] = "SET time_zone = '+00:00'"
    elif url.get_backend_name() == "postgresql":
        connect_args["server_settings"] = {"timezone": "UTC"}
    return create_async_engine(
        url, pool_size=5, max_overflow=5, pool_recycle=3600, pool_pre_ping=True, connect_args=connect_args
    )


async def create_schema(engine: AsyncEngine) -> None:
    """fleet's own copy of the tables, for the demo and benchmarks on SQLite only: a board
    has its tables already, made by its migrations."""
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
