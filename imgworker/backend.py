"""Where renders run. Jobs talk to a :class:`RenderBackend`: the process pool here, or the GPU
backend (:mod:`imgworker.gpu.backend`, RENDER_BACKEND=gpu) in front of it, without touching
jobs or queues.

The process pool keeps CPU work off the worker's event loop: a loop busy decoding cannot poll
Redis, renew job locks or answer a signal. It is our own small pool rather than
``ProcessPoolExecutor``, because a fleet needs three things that one cannot do: kill the one
process whose render ran past its timeout, know which render a dead process was running (so
only that job fails), and replace processes after N renders so memory stays flat.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import enum
import multiprocessing
import os
import pickle
import resource
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Protocol

from imgworker.render import RenderOptions, RenderRequest, RenderResult, render
from imgworker.render.storage import Where


@dataclass(slots=True)
class RenderLost(RenderResult):
    """A render whose process died (``RenderProcessCrashed``) or was killed at its timeout
    (``RenderTimeout``): the input may be to blame, so it is retried once, and dead-lettered
    when the same original loses its process again. Made here, in the worker: it never
    crosses the pipe."""


class Priority(enum.IntEnum):
    """Who gets the next free render process: uploads always before archive work."""

    UPLOAD = 0
    BULK = 1


class RenderBackend(Protocol):
    size: int
    """How many renders it runs at once."""

    @property
    def busy(self) -> int:
        """How many renders are running now."""
        ...

    async def render_batch(
        self,
        requests: Sequence[RenderRequest],
        *,
        options: RenderOptions | None = None,
        priority: Priority = ...,
    ) -> list[RenderResult]:
        """One result per request, in order; failures are results, not exceptions.

        ``options`` overrides the backend's (a bulk run re-rendering only some variants)."""
        ...

    async def close(self) -> None: ...


def configure_vips() -> None:
    """libvips settings for a render process, as Danbooru runs it in production.

    One libvips thread per process (processes scale better than threads: 2 x 1 gave 64
    thumbs/s here, 1 x 2 gave 33), no operation cache (every original is seen once), and
    loaders not meant for untrusted input refused."""
    os.environ["VIPS_CONCURRENCY"] = "1"
    os.environ["VIPS_BLOCK_UNTRUSTED"] = "1"
    import pyvips

    pyvips.concurrency_set(1)
    pyvips.cache_set_max(0)
    pyvips.block_untrusted_set(True)


_M_ARENA_MAX = -8  # glibc mallopt()


def limit_memory(memory_mb: int) -> None:
    """Bound this process's address space (0: no bound), so a decode that allocates past it
    fails that image with an allocation error instead of taking the machine's memory.

    glibc gives each thread its own 64 MB malloc arena (reserved, not used): capped at 2, a
    render process maps ~220 MB instead of ~400 MB, so the bound measures real use."""
    if not memory_mb:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, 2)
    limit = memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _serve(conn: Connection, root: Where, options: RenderOptions, memory_mb: int = 0) -> None:
    """A render process: one request in, one result out, until told to stop (None) or killed.

    If the worker dies (even by SIGKILL) its end of the pipe closes: an idle process sees EOF
    at once, a busy one finishes its render (atomic writes: nothing partial is left) and
    ends when it cannot send the result. No orphan outlives its render."""
    configure_vips()
    limit_memory(memory_mb)
    conn.send(os.getpid())  # ready
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            return
        request, options = request
        try:
            conn.send(render(root, request, options))
        except (BrokenPipeError, ConnectionResetError):
            return


class _Process:
    def __init__(self, context: Any, root: Where, options: RenderOptions, memory_mb: int) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, root, options, memory_mb), daemon=True)
        self.process.start()
        child.close()
        self.renders = 0
        self.ready = False
        self.starting = asyncio.Lock()  # warm_up() and a first render may both wait for "ready"

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.process.kill()
        self.process.join(5)
        self.conn.close()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            _send(self.conn, None)
        self.process.join(5)
        if self.process.is_alive():
            self.kill()
        self.conn.close()


def _send(conn: Connection, message: Any) -> None:
    """Send on a blocking fd (``_receive`` leaves it non-blocking): ``Connection.send`` gives
    up on a full pipe otherwise. The render process reads at once, so this does not stall."""
    os.set_blocking(conn.fileno(), True)
    conn.send(message)


async def _receive(conn: Connection, timeout_s: float | None) -> Any:
    """The next message on ``conn`` (multiprocessing's framing: a 4-byte length, or -1 and an
    8-byte one, then the pickle), read whole without blocking the loop.

    ``Connection.recv`` assumes a blocking fd; uvloop's ``add_reader`` makes it non-blocking,
    so a result larger than the pipe buffer read that way fails half-way, as if the render
    process had crashed. Here the fd is non-blocking on purpose and read until complete."""
    fd = conn.fileno()
    os.set_blocking(fd, False)
    async with asyncio.timeout(timeout_s):
        (size,) = struct.unpack("!i", await _read_exactly(fd, 4))
        if size == -1:
            (size,) = struct.unpack("!Q", await _read_exactly(fd, 8))
        return pickle.loads(await _read_exactly(fd, size))


async def _read_exactly(fd: int, size: int) -> bytes:
    """``size`` bytes from non-blocking ``fd``; EOFError if the writer is gone first."""
    data = bytearray()
    while len(data) < size:
        try:
            chunk = os.read(fd, size - len(data))
        except BlockingIOError:
            await _readable(fd)
            continue
        if not chunk:
            raise EOFError(f"pipe closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


async def _readable(fd: int) -> None:
    """Until ``fd`` has data or EOF (the process died), without blocking the loop."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


class ProcessPoolBackend:
    """``size`` render processes (forkserver start: libvips is not fork-safe after init).

    A free process goes to the oldest waiting upload render, and only when none waits to
    the oldest bulk render. On top, ``reserve`` processes are kept free of bulk work: bulk
    renders use at most ``size - reserve`` processes, so an upload arriving during a
    saturating archive run starts at once instead of waiting for a bulk render to end. (The
    img worker sizes the pool at CPU count + reserve: bulk still uses every core.)"""

    def __init__(
        self,
        root: Where,
        options: RenderOptions,
        size: int,
        *,
        timeout_s: float = 120.0,
        recycle_after: int = 500,
        reserve: int = 0,
        memory_mb: int = 0,
        start_method: str = "forkserver",
    ) -> None:
        if not 0 <= reserve < size:
            raise ValueError(f"reserve={reserve} must leave bulk work at least one of {size} processes")
        self.root = root
        self.options = options
        self.size = size
        self.reserve = reserve
        self.timeout_s = timeout_s
        self.recycle_after = recycle_after
        self.memory_mb = memory_mb
        """Address-space bound of each render process in MB (0: none)."""
        self._context = multiprocessing.get_context(start_method)
        self._idle: list[_Process] = []
        self._waiting: dict[Priority, collections.deque[asyncio.Future[_Process]]] = {
            p: collections.deque() for p in Priority
        }
        self._all: set[_Process] = set()
        for _ in range(size):
            self._spawn()

    def _spawn(self) -> None:
        proc = _Process(self._context, self.root, self.options, self.memory_mb)
        self._all.add(proc)
        self._release(proc)

    def _replace(self, proc: _Process, *, kill: bool) -> None:
        self._all.discard(proc)
        if kill:
            proc.kill()
        else:  # let it finish its exit off the event loop
            threading.Thread(target=proc.stop, daemon=True).start()
        self._spawn()

    def _release(self, proc: _Process) -> None:
        for priority in Priority:
            if priority is Priority.BULK and len(self._idle) < self.reserve:
                break  # this process refills the reserve kept for uploads
            waiting = self._waiting[priority]
            while waiting:
                future = waiting.popleft()
                if not future.done():
                    future.set_result(proc)
                    return
        self._idle.append(proc)

    def _queued(self, priority: Priority) -> bool:
        """Whether renders of ``priority`` are waiting (dropping ones cancelled meanwhile)."""
        waiting = self._waiting[priority]
        while waiting and waiting[0].done():
            waiting.popleft()
        return bool(waiting)

    async def _acquire(self, priority: Priority) -> _Process:
        if priority is Priority.UPLOAD:
            can_start = bool(self._idle) and not self._queued(Priority.UPLOAD)
        else:
            can_start = len(self._idle) > self.reserve and not any(self._queued(p) for p in Priority)
        if can_start:
            return self._idle.pop()
        future: asyncio.Future[_Process] = asyncio.get_running_loop().create_future()
        self._waiting[priority].append(future)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release(future.result())  # handed over just as we were cancelled
            raise

    @property
    def busy(self) -> int:
        return len(self._all) - len(self._idle)

    @property
    def pids(self) -> list[int]:
        return sorted(p.pid for p in self._all)

    @property
    def busy_pids(self) -> list[int]:
        return sorted(p.pid for p in self._all - set(self._idle))

    async def warm_up(self) -> None:
        """Until every process has started and imported libvips."""
        for proc in list(self._all):
            await self._await_ready(proc)

    async def _await_ready(self, proc: _Process) -> None:
        async with proc.starting:  # one reader per pipe: a second add_reader would replace the first
            if not proc.ready:
                await _receive(proc.conn, 60)
                proc.ready = True

    async def render_batch(
        self,
        requests: Sequence[RenderRequest],
        *,
        options: RenderOptions | None = None,
        priority: Priority = Priority.UPLOAD,
    ) -> list[RenderResult]:
        chosen = options or self.options
        return list(await asyncio.gather(*(self._render_one(r, chosen, priority) for r in requests)))

    async def _render_one(
        self, request: RenderRequest, options: RenderOptions, priority: Priority
    ) -> RenderResult:
        proc = await self._acquire(priority)
        try:
            await self._await_ready(proc)
            _send(proc.conn, (request, options))
            result: RenderResult = await _receive(proc.conn, self.timeout_s)
        except TimeoutError:
            self._replace(proc, kill=True)  # really stopped, not abandoned
            return _lost(
                request, "RenderTimeout", f"render ran longer than {self.timeout_s:g} s; process killed"
            )
        except (EOFError, OSError) as exc:
            code = proc.process.exitcode
            self._replace(proc, kill=True)
            return _lost(request, "RenderProcessCrashed", f"render process died (exit code {code}): {exc!r}")
        except BaseException:  # cancelled mid-render: the process is still busy with it
            self._replace(proc, kill=True)
            raise
        proc.renders += 1
        if proc.renders >= self.recycle_after:
            self._replace(proc, kill=False)
        else:
            self._release(proc)
        return result

    async def close(self) -> None:
        for proc in list(self._all):
            proc.stop()
        self._all.clear()
        self._idle.clear()


def _lost(request: RenderRequest, error_type: str, message: str) -> RenderLost:
    return RenderLost(
        request.image_id,
        request.file,
        ok=False,
        error=message,
        error_type=error_type,
        permanent=False,
    )
