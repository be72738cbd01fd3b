"""The render process pool: real processes, killed for real."""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
from dataclasses import replace
from pathlib import Path

import pyvips

from fleet.board import VariantStatus
from fleet.cpus import usable_cpus
from fleet.render_settings import RenderSettings
from fleet.settings import Settings
from imgworker.backend import ProcessPoolBackend, RenderLost
from imgworker.render import RenderRequest, RenderResult, Variant, options_of
from tests import images


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def big_png(storage: Path, name: str) -> tuple[str, str]:
    """An original that takes a good fraction of a second to render on one core."""
    return images.write(storage, name, images.pattern(6000, 6000), compression=1)


async def test_renders_run_in_pool_processes(storage: Path) -> None:
    backend = ProcessPoolBackend(storage, options_of(RenderSettings()), size=2)
    try:
        await backend.warm_up()
        assert os.getpid() not in backend.pids and len(backend.pids) == 2
        for i in range(4):
            images.jpeg(storage, f"p{i}.jpg", 1500, 1000)
        requests = [RenderRequest(i, f"p{i}", "jpg") for i in range(4)] + [RenderRequest(9, "missing", "jpg")]
        results = await backend.render_batch(requests)
        assert [r.image_id for r in results] == [0, 1, 2, 3, 9]
        assert all(r.ok for r in results[:4])
        assert (results[4].ok, results[4].error_type) == (False, "MissingOriginalError")
        assert backend.busy == 0
    finally:
        await backend.close()


async def test_a_killed_render_process_fails_only_its_own_render(storage: Path) -> None:
    backend = ProcessPoolBackend(storage, options_of(RenderSettings()), size=2)
    try:
        await backend.warm_up()
        big = big_png(storage, "big.png")
        images.jpeg(storage, "small.jpg", 800, 600)
        doomed = asyncio.create_task(backend.render_batch([RenderRequest(1, *big)]))
        await asyncio.sleep(0.05)  # the big render is under way in one process
        [busy_pid] = backend.busy_pids
        survivor = asyncio.create_task(backend.render_batch([RenderRequest(2, "small", "jpg")]))
        os.kill(busy_pid, signal.SIGKILL)
        [crashed] = await doomed
        [fine] = await survivor
        assert (crashed.ok, crashed.permanent, crashed.error_type) == (False, False, "RenderProcessCrashed")
        assert isinstance(crashed, RenderLost)
        assert fine.ok, fine.error
        assert busy_pid not in backend.pids and len(backend.pids) == 2  # replaced
        [again] = await backend.render_batch([RenderRequest(1, *big)])
        assert again.ok, again.error
    finally:
        await backend.close()


async def test_a_render_past_its_timeout_is_killed_not_abandoned(storage: Path) -> None:
    backend = ProcessPoolBackend(storage, options_of(RenderSettings()), size=1, timeout_s=0.05)
    try:
        await backend.warm_up()
        [pid] = backend.pids
        [result] = await backend.render_batch([RenderRequest(1, *big_png(storage, "slow.png"))])
        assert (result.ok, result.permanent, result.error_type) == (False, False, "RenderTimeout")
        assert isinstance(result, RenderLost)
        await asyncio.sleep(0.1)
        assert not alive(pid)
        assert backend.pids != [pid]
        images.jpeg(storage, "quick.jpg", 300, 200)
        [quick] = await backend.render_batch([RenderRequest(2, "quick", "jpg")])
        assert quick.ok
        assert not list((storage / "thumbs").glob("slow*"))  # nothing half-written
    finally:
        await backend.close()


async def test_processes_are_recycled_after_n_renders(storage: Path) -> None:
    backend = ProcessPoolBackend(storage, options_of(RenderSettings()), size=1, recycle_after=3)
    try:
        images.jpeg(storage, "r.jpg", 400, 300)
        seen = set()
        for _ in range(7):
            seen.update(backend.pids)
            [result] = await backend.render_batch([RenderRequest(1, "r", "jpg")])
            assert result.ok
        assert len(seen) == 3  # renders 1-3, 4-6, 7-
    finally:
        await backend.close()


def test_render_processes_use_one_libvips_thread_and_block_untrusted_loaders() -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    with ctx.Pool(1, initializer=_configure) as pool:
        assert pool.apply(pyvips.concurrency_get) == 1
        assert pool.apply(os.getenv, ("VIPS_BLOCK_UNTRUSTED",)) == "1"


def _configure() -> None:
    from imgworker.backend import configure_vips

    configure_vips()


def test_a_result_over_a_megabyte_arrives_whole_under_uvloop(storage: Path) -> None:
    """uvloop makes the pipe fds non-blocking: a result larger than the pipe buffer must still
    be read whole, not taken for a crashed render process."""
    import uvloop

    images.jpeg(storage, "small.jpg", 300, 200)
    many = tuple(Variant(f"v{i:05d}-{'x' * 200}", "many", 1000, 1000, 80) for i in range(6000))
    options = replace(options_of(RenderSettings()), variants=options_of(RenderSettings()).variants + many)

    async def main() -> list[RenderResult]:
        backend = ProcessPoolBackend(storage, options, size=1)
        try:
            await backend.warm_up()
            return await backend.render_batch([RenderRequest(1, "small", "jpg")])
        finally:
            await backend.close()

    [result] = uvloop.run(main())
    assert result.ok, f"{result.error_type}: {result.error}"
    assert len(pickle.dumps(result)) > 1_000_000
    assert len(result.outputs) == 6003 and result.outputs["thumb"].status == VariantStatus.READY


async def test_an_allocation_past_the_memory_limit_fails_that_image_for_good(storage: Path) -> None:
    """Under RENDER_MEMORY_MB, a decode that allocates too much (here: an AVIF whose 8000x8000
    decode needs ~1 GB, with the header budget switched off) fails that image permanently with
    the reason; the process survives and renders the next image."""
    flat = pyvips.Image.black(8000, 8000, bands=3).cast("uchar").copy(interpretation="srgb")
    images.write(storage, "bomb.avif", flat, compression="av1", effort=0, Q=10)
    images.jpeg(storage, "after.jpg", 800, 600)
    options = replace(options_of(RenderSettings()), decode_budget_mb=0)
    backend = ProcessPoolBackend(storage, options, size=1, memory_mb=600)
    try:
        await backend.warm_up()
        [pid] = backend.pids
        [bomb] = await backend.render_batch([RenderRequest(1, "bomb", "avif")])
        assert (bomb.ok, bomb.permanent, bomb.error_type) == (False, True, "TooMuchMemoryError"), bomb.error
        assert "RENDER_MEMORY_MB" in (bomb.error or "")
        [after] = await backend.render_batch([RenderRequest(2, "after", "jpg")])
        assert after.ok, after.error
        assert backend.pids == [pid]  # the same process, not a crashed and replaced one
    finally:
        await backend.close()


def test_pool_size_follows_the_cpus_this_process_may_use(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    assert usable_cpus(tmp_path / "absent") == len(os.sched_getaffinity(0))
    cpu_max.write_text("max 100000\n")
    assert usable_cpus(cpu_max) == len(os.sched_getaffinity(0))
    cpu_max.write_text("150000 100000\n")  # 1.5 CPUs
    assert usable_cpus(cpu_max) == min(2, len(os.sched_getaffinity(0)))
    cpu_max.write_text("50000 100000\n")
    assert usable_cpus(cpu_max) == 1
    assert Settings().pool_size == usable_cpus()
    assert Settings(img_pool_size=3).pool_size == 3
