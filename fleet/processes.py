"""Worker processes started from Python: for the demo, the tests and the soak."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from fleet.client import FleetClient
from fleet.keys import health_check_key, queue_key
from fleet.registry import Queue
from fleet.settings import Settings


def start_worker(kinds: list[str], settings: Settings, **popen: Any) -> subprocess.Popen[Any]:
    """``python -m fleet worker KIND...`` with ``settings`` in its environment (``popen``:
    more ``subprocess.Popen`` arguments, e.g. where its stderr goes)."""
    env = {**os.environ, **settings.as_env()}
    return subprocess.Popen([sys.executable, "-m", "fleet", "worker", *kinds], env=env, **popen)


def stop(proc: subprocess.Popen[Any], timeout_s: float = 30.0) -> int:
    """Stop ``proc`` for real and return its exit status: SIGTERM (SIGCONT first, as a stopped
    process acts on nothing else), then SIGKILL if it has not exited within ``timeout_s``.

    A process that leads its own process group (started with ``start_new_session``, like a
    shell running a command line) is signalled with its whole group, and what is left of the
    group once it has exited is killed: a shell ends at SIGTERM without waiting for its children."""
    try:
        group = os.getpgid(proc.pid) == proc.pid
    except ProcessLookupError:
        group = False

    def send(signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, signum)
            else:
                proc.send_signal(signum)

    if proc.poll() is None:
        send(signal.SIGCONT)
        send(signal.SIGTERM)
    try:
        status = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        status = proc.wait()
    if group:
        send(signal.SIGKILL)
    return status


@contextlib.contextmanager
def worker_process(kinds: list[str], settings: Settings, **popen: Any) -> Iterator[subprocess.Popen[Any]]:
    """A real worker process (``python -m fleet worker KIND...``), stopped on exit (:func:`stop`)."""
    proc = start_worker(kinds, settings, **popen)
    try:
        yield proc
    finally:
        stop(proc)


async def wait_healthy(client: FleetClient, queue: Queue, timeout_s: float = 60.0) -> None:
    """Until a worker of ``queue`` has written its health-check key."""
    key = health_check_key(queue_key(client.settings.namespace, queue))
    deadline = time.monotonic() + timeout_s
    while not await client.redis.exists(key):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {queue} worker came up within {timeout_s} s")
        await asyncio.sleep(0.05)
