"""Worker processes started from Python: for the demo, the tests and the soak."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

from fleet.client import FleetClient
from fleet.keys import health_check_key, queue_key
from fleet.registry import Queue
from fleet.settings import Settings


def start_worker(kinds: list[str], settings: Settings) -> subprocess.Popen[bytes]:
    """``python -m fleet worker KIND...`` with ``settings`` in its environment."""
    env = {**os.environ, **settings.as_env()}
    return subprocess.Popen([sys.executable, "-m", "fleet", "worker", *kinds], env=env)


@contextlib.contextmanager
def worker_process(kinds: list[str], settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    """A real worker process (``python -m fleet worker KIND...``), stopped with SIGTERM on exit."""
    proc = start_worker(kinds, settings)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def wait_healthy(client: FleetClient, queue: Queue, timeout_s: float = 60.0) -> None:
    """Until a worker of ``queue`` has written its health-check key."""
    key = health_check_key(queue_key(client.settings.namespace, queue))
    deadline = time.monotonic() + timeout_s
    while not await client.redis.exists(key):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {queue} worker came up within {timeout_s} s")
        await asyncio.sleep(0.05)
