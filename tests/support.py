"""What the tests share besides fixtures (those stay in conftest.py): waiting on conditions,
never on time; workers in this event loop or in real processes stopped for real; a gate a
render waits at until the test opens it; a board on SQLite; the CLI in a subprocess.

Waiting: :func:`wait_for` polls a condition and fails naming what it waited for and the last
value it saw. A negative assertion ("IQDB was not called again") comes after :func:`drained`
holds, never after a pause: a pause long enough on one machine is too short on a loaded one.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import inspect
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload

import pytest

from fleet.client import FleetClient
from fleet.keys import job_key, queue_key
from fleet.processes import stop
from fleet.registry import DELETE_FROM_IQDB, INDEX_IQDB, Queue
from fleet.settings import Settings
from fleet.worker import Context, build_worker, handles
from imgworker.render.storage import LocalStore, Original

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")

# --- waiting ------------------------------------------------------------------------------------


@overload
async def wait_for(
    condition: Callable[[], Awaitable[T]],
    *,
    what: str,
    until: Callable[[T], object] = ...,
    timeout: float = ...,
    every: float = ...,
) -> T: ...


@overload
async def wait_for(
    condition: Callable[[], T],
    *,
    what: str,
    until: Callable[[T], object] = ...,
    timeout: float = ...,
    every: float = ...,
) -> T: ...


async def wait_for(
    condition: Callable[[], Any],
    *,
    what: str,
    until: Callable[[Any], object] = bool,
    timeout: float = 60.0,
    every: float = 0.05,
) -> Any:
    """Call ``condition()`` (a function or a coroutine function) every ``every`` s until
    ``until`` accepts its value (by default: until it is truthy), and return that value.

    Past ``timeout`` s it fails with ``what`` it waited for and the last value seen. The
    timeout only bounds a test that would otherwise hang: nothing is asserted on time."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if until(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what}; last: {value!r:.2000}")
        await asyncio.sleep(every)


async def drained(client: FleetClient, *queues: Queue) -> bool:
    """Whether every job of ``queues`` has ended: arq keeps a job in its queue until it ends,
    so an empty queue has nothing queued, deferred or running (and nothing left to chain)."""
    counts = [await client.redis.zcard(queue_key(client.settings.namespace, q)) for q in queues]
    return not any(counts)


# --- workers ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running_worker(*worker_kwargs: dict[str, Any] | list[dict[str, Any]]) -> AsyncIterator[Any]:
    """arq workers in this event loop (renders still run in the img worker's process pool).

    Takes worker settings as the factories return them (a dict, or a list for a worker kind
    serving several queues); yields the worker, or a list of them when there are several."""
    from fleet.worker import close_worker, make_worker

    flat = [k for kwargs in worker_kwargs for k in (kwargs if isinstance(kwargs, list) else [kwargs])]
    workers = [make_worker(kwargs, handle_signals=False) for kwargs in flat]
    tasks = [asyncio.create_task(w.async_run()) for w in workers]
    try:
        yield workers[0] if len(workers) == 1 else workers
    finally:
        for worker, task in zip(workers, tasks, strict=True):
            await close_worker(worker)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def iqdb_worker(settings: Settings, index: Any, **options: Any) -> dict[str, Any]:
    """An IQDB-queue worker whose index job is ``index`` (its delete job does nothing): to
    provoke failures on purpose, or to record what a job saw. ``options`` go to build_worker."""

    @handles(DELETE_FROM_IQDB)
    async def delete(ctx: Context, payload: Any) -> None:
        return None

    return build_worker(Queue.IQDB, [handles(INDEX_IQDB)(index), delete], settings, **options)


async def plant(client: FleetClient, queue: Queue, job_id: str, raw: bytes) -> None:
    """Write a job straight into Redis, as an attacker with Redis access could."""
    await client.redis.set(job_key(job_id), raw)
    await client.redis.zadd(queue_key(client.settings.namespace, queue), {job_id: time.time() * 1000})


@contextlib.contextmanager
def process(
    command: str | Sequence[str], env: dict[str, str], *, stop_s: float = 30.0, **popen: Any
) -> Iterator[subprocess.Popen[Any]]:
    """A real process (a worker with an environment of the test's making, an API server, a
    shell command line with ``shell=True``), stopped for real on the way out whatever the test
    did to it (fleet.processes.stop: SIGTERM, SIGKILL after ``stop_s``); its exit status is its
    ``returncode`` after the block. A worker on a test's settings: fleet.processes.worker_process."""
    proc = subprocess.Popen(command if isinstance(command, str) else list(command), env=env, **popen)
    try:
        yield proc
    finally:
        stop(proc, stop_s)


def fleet_env(settings: Settings) -> dict[str, str]:
    """This process's environment with ``settings`` over it, as a fleet command gets it."""
    return {**os.environ, **settings.as_env()}


def fleet_command(*args: str) -> list[str]:
    """``python -m fleet ARGS...`` with this interpreter."""
    return [sys.executable, "-m", "fleet", *args]


def fleet_cli(
    settings: Settings, *args: str, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    """``fleet ARGS...`` run to its end with ``settings`` (its output captured); ``timeout``
    bounds a command that would otherwise hang the test if it failed to end."""
    return subprocess.run(
        fleet_command(*args), env=fleet_env(settings), capture_output=True, text=True, timeout=timeout
    )


# --- renders held at a gate ------------------------------------------------------------------------


class Gate:
    """A gate that renders wait at, in any process, until the test opens it: closed while
    the test holds an exclusive lock on ``path``; a waiting render asks for a shared one.

    ``with Gate(tmp_path / "gate") as gate:`` ... ``gate.open()``; leaving the block opens
    it too, so a failing test never leaves a render process waiting."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def open(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.open()

    @staticmethod
    def wait(path: Path) -> None:
        """Until the gate at ``path`` is open (called where the render runs)."""
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        finally:
            os.close(fd)


class GatedStore(LocalStore):
    """The storage folder ``root``, where reading the originals named in ``held`` waits at
    the gate at ``gate`` first: a render of one of them is certainly still running until the
    test opens the gate. Picklable, so it crosses into the render processes."""

    def __init__(self, root: Path, gate: Path, held: Sequence[str]) -> None:
        super().__init__(root)
        self.gate = gate
        self.held = frozenset(held)

    def original(self, filename: str, ext: str) -> Original:
        if filename in self.held:
            Gate.wait(self.gate)
        return super().original(filename, ext)


# --- services and boards -------------------------------------------------------------------------

REQUIRE_SERVICES = os.environ.get("FLEET_REQUIRE_SERVICES") == "1"


def unavailable(reason: str) -> None:
    """Skip a test whose service is missing, saying why (fail it under FLEET_REQUIRE_SERVICES=1)."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (FLEET_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


BOARD_SCHEMAS = {
    "mariadb-seed": ("mysql_url", ("mariadb_seed.sql",)),
    "mariadb": ("mysql_url", ("mariadb_seed.sql", "mariadb_migrations.sql")),
    "postgres": ("postgres_url", ("postgres_head.sql",)),
}
"""The board's real tables (tests/board_schema/, written from docs/board.md), each kind's DDL
files run in order: the seed-era board on MariaDB; today's on MariaDB, as the board's
migrations took the seed-era tables there; today's on PostgreSQL (a frozen baseline)."""


@contextlib.asynccontextmanager
async def board_database(request: pytest.FixtureRequest, kind: str) -> AsyncIterator[str]:
    """A fresh database holding the board's tables of ``kind``, dropped afterwards."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    server_fixture, ddl_files = BOARD_SCHEMAS[kind]
    server_url: str = request.getfixturevalue(server_fixture)
    name = f"fleet_test_{uuid.uuid4().hex[:12]}"
    quote = "`" if server_fixture == "mysql_url" else '"'
    server = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    async with server.connect() as conn:
        await conn.execute(text(f"CREATE DATABASE {quote}{name}{quote}"))
    url = f"{server_url.rstrip('/')}/{name}"
    engine = create_async_engine(url)
    try:
        statements = "\n".join(
            line for ddl in ddl_files
            for line in (Path(__file__).parent / "board_schema" / ddl).read_text().splitlines()
            if not line.startswith("--")
        ).split(";")  # fmt: skip
        async with engine.begin() as conn:
            if server_fixture == "mysql_url":
                mode = (await conn.execute(text("SELECT @@SESSION.sql_mode"))).scalar_one()
                assert "STRICT_TRANS_TABLES" in mode, f"MariaDB is not in strict mode: {mode}"
            for statement in statements:
                if statement.strip():
                    await conn.execute(text(statement))
            await conn.execute(
                text("INSERT INTO users (user_id, username) VALUES (:id, :name)"),
                [{"id": i, "name": f"user{i}"} for i in range(1, 1101)],
            )
        await engine.dispose()
        yield url
    finally:
        await engine.dispose()
        async with server.connect() as conn:
            await conn.execute(text(f"DROP DATABASE IF EXISTS {quote}{name}{quote}"))
        await server.dispose()


async def sqlite_board(folder: Path) -> str:
    """The URL of a new SQLite board in ``folder`` holding fleet's copy of the board's
    tables (the demo's), created."""
    from fleet.db import create_engine, create_schema

    url = f"sqlite+aiosqlite:///{folder / 'board.sqlite3'}"
    engine = create_engine(Settings(database_url=url))
    try:
        await create_schema(engine)
    finally:
        await engine.dispose()
    return url


async def bulk_board(settings: Settings, count: int, distinct: int = 12) -> AsyncEngine:
    """``count`` rows (variants PENDING) and their originals, hard links to a few small
    distinct files, on the board of ``settings`` (its tables made, as ``bulk_settings`` does)."""
    import sqlalchemy as sa

    from fleet import db
    from tests import images
    from tests.board import PENDING_VARIANTS

    full = settings.storage_path / "fullsize"
    sources = [
        images.jpeg(settings.storage_path, f"src-{k}.jpg", 160 + 23 * k, 120 + 17 * k)
        for k in range(distinct)
    ]
    rows = []
    for image_id in range(1, count + 1):
        name = f"2025-{1 + image_id % 12:02d}-{1 + image_id % 28:02d}-{image_id}"
        os.link(full / f"{sources[image_id % distinct][0]}.jpg", full / f"{name}.jpg")
        rows.append({"image_id": image_id, "filename": name, "ext": "jpg", **PENDING_VARIANTS})
    engine = db.create_engine(settings)
    async with engine.begin() as conn:
        await conn.execute(sa.insert(db.images), rows)
    return engine


def rethumb_cli(settings: Settings, *args: str) -> subprocess.Popen[str]:
    """``fleet rethumb ARGS...`` started in its own process, its output piped."""
    return subprocess.Popen(
        fleet_command("rethumb", *args),
        env=fleet_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
