"""The process-pool backend: renders run in other processes, one libvips thread each."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pyvips

from imgworker.backend import ProcessPoolBackend
from imgworker.render import RenderRequest, default_options
from tests import images


async def test_renders_run_in_pool_processes_with_one_vips_thread(storage: Path) -> None:
    backend = ProcessPoolBackend(storage, default_options(), size=2)
    try:
        await backend.warm_up()
        loop = asyncio.get_running_loop()
        pids = await asyncio.gather(*(loop.run_in_executor(backend._pool, os.getpid) for _ in range(8)))
        assert os.getpid() not in pids
        threads = await loop.run_in_executor(backend._pool, pyvips.concurrency_get)
        assert threads == 1

        for i in range(4):
            images.jpeg(storage, f"p{i}.jpg", 1500, 1000)
        requests = [RenderRequest(i, f"p{i}", "jpg") for i in range(4)] + [RenderRequest(9, "missing", "jpg")]
        results = await backend.render_batch(requests)
        assert [r.image_id for r in results] == [0, 1, 2, 3, 9]
        assert all(r.ok for r in results[:4])
        assert (results[4].ok, results[4].error_type) == (False, "MissingOriginalError")
    finally:
        await backend.close()


async def test_a_crashed_render_process_fails_transiently_and_the_pool_recovers(storage: Path) -> None:
    backend = ProcessPoolBackend(storage, default_options(), size=2)
    try:
        await backend.warm_up()
        images.jpeg(storage, "ok.jpg", 800, 600)
        victim = next(iter(backend._pool._processes.values()))  # type: ignore[union-attr]
        victim.kill()
        victim.join()
        [crashed] = await backend.render_batch([RenderRequest(1, "ok", "jpg")])
        assert (crashed.ok, crashed.permanent, crashed.error_type) == (False, False, "RenderProcessCrashed")
        [again] = await backend.render_batch([RenderRequest(1, "ok", "jpg")])
        assert again.ok, again.error
    finally:
        await backend.close()
