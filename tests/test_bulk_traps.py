"""Day-one traps of ``fleet rethumb`` (issue 3/7): flags of skipped images, workers with other
render settings, finished and resumed runs, folders outside the storage root, no worker at all.
Real Redis, real SQLite, real renders, the real CLI in a subprocess where the CLI is the point."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from fleet import db
from fleet.board import VariantStatus
from fleet.bulk import BulkRun, Selection, rethumb
from fleet.client import FleetClient
from fleet.errors import FleetError
from fleet.health import check
from fleet.registry import Queue
from fleet.settings import Settings
from imgworker.worker import worker_settings
from tests import images, test_bulk
from tests.board import PENDING_VARIANTS
from tests.conftest import running_worker
from tests.test_bulk import board, rethumb_cli

bulk_settings = test_bulk.bulk_settings  # the same fixture: a SQLite board, small batches


async def wait_until(condition: Any, timeout_s: float = 60, what: str = "condition") -> None:
    """Until the coroutine function ``condition`` returns true, with a deadline."""
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def _light(settings: Settings) -> list[dict[str, Any]]:
    from ratingworker.worker import db_worker_settings

    return [db_worker_settings(settings)]


async def _img_bulk_live(settings: Settings, client: FleetClient) -> bool:
    return bool((await check(client.redis, settings, Queue.IMG_BULK)).live)


def _said(err: str) -> list[str]:
    """The CLI's stderr lines, less the banner every command prints (which Redis it reads)."""
    return [line for line in err.strip().splitlines() if not line.startswith("fleet: Redis ")]


async def _finish(proc: subprocess.Popen[str], timeout_s: float = 120) -> tuple[str, str]:
    """The CLI's output once it exits (the workers run on this loop meanwhile)."""
    return await asyncio.to_thread(proc.communicate, timeout=timeout_s)


# --- 3: a skip settles the flags from the files on disk --------------------------------------------


async def test_a_skipped_image_gets_its_flags_from_the_files_on_disk(
    bulk_settings: Settings, client: FleetClient
) -> None:
    settings = bulk_settings.replace(medium_edge=200, large_edge=400)
    engine = await board(settings, 6, distinct=6)  # 160x120 up to 275x205: some have a medium
    async with engine.begin() as conn:  # and one large original, with a medium and a large
        images.jpeg(settings.storage_path, "2025-01-01-7.jpg", 900, 700, Q=98)
        await conn.execute(
            sa.insert(db.images),
            [{"image_id": 7, "filename": "2025-01-01-7", "ext": "jpg", **PENDING_VARIANTS}],
        )
    async with running_worker(worker_settings(settings), _light(settings)):
        first = await rethumb(client.redis, settings, Selection(), engine=engine, poll_s=0.05)
        assert (first.rendered, first.failed) == (7, 0)

        async def flags() -> dict[int, tuple[int, int]]:
            async with engine.connect() as conn:
                rows = (
                    await conn.execute(sa.select(db.images.c.image_id, db.images.c.medium, db.images.c.large))
                ).all()
            return {int(i): (int(m), int(lg)) for i, m, lg in rows}

        async def settled() -> bool:
            return VariantStatus.PENDING not in {f for pair in (await flags()).values() for f in pair}

        await wait_until(settled, what="the first run's flags")
        async with engine.begin() as conn:  # the report: outputs exist, flags left at PENDING
            await conn.execute(sa.update(db.images).values(**PENDING_VARIANTS))

        again = await rethumb(client.redis, settings, Selection(mode="missing"), engine=engine, poll_s=0.05)
        assert (again.rendered, again.skipped) == (0, 7)  # nothing re-encoded
        await wait_until(settled, what="the skipped images' flags")

    def on_disk(folder: str, name: str) -> int:
        return int((settings.storage_path / folder / f"{name}.jpg").exists())

    names = {7: "2025-01-01-7"} | {i: f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}-{i}" for i in range(1, 7)}
    want = {i: (on_disk("medium", n), on_disk("large", n)) for i, n in names.items()}
    assert await flags() == want
    assert want[7] == (1, 1) and (0, 0) in want.values()  # both READY and NONE were settled
    await engine.dispose()


# --- 4: the feeder and the workers agree on the render settings ------------------------------------


async def test_the_feeder_refuses_live_workers_that_render_with_other_settings(
    bulk_settings: Settings, client: FleetClient
) -> None:
    engine = await board(bulk_settings, 4, distinct=4)
    changed = bulk_settings.replace(thumb_width=300, thumb_height=300)
    async with running_worker(worker_settings(bulk_settings)):  # still at the old size
        await wait_until(lambda: _img_bulk_live(bulk_settings, client), what="an img-bulk beat")
        with pytest.raises(FleetError, match=r"other settings .*THUMB_WIDTH=300 here \(500 there\)"):
            await asyncio.wait_for(
                rethumb(client.redis, changed, Selection(), engine=engine, poll_s=0.05), 60
            )
    run = BulkRun(client.redis, changed.namespace, Selection().run_id(changed))
    assert await run.state() == {}  # nothing started, so nothing "finished" after the restart
    await engine.dispose()


async def test_a_worker_with_other_settings_refuses_the_batches_and_the_summary_says_why(
    bulk_settings: Settings, client: FleetClient
) -> None:
    engine = await board(bulk_settings, 4, distinct=4)
    changed = bulk_settings.replace(thumb_width=300, thumb_height=300)
    run = BulkRun(client.redis, changed.namespace, Selection().run_id(changed))
    feeding = asyncio.create_task(rethumb(client.redis, changed, Selection(), engine=engine, poll_s=0.05))

    async def fed() -> bool:
        return int((await run.state()).get("fed", 0)) == 4

    await wait_until(fed, what="the feeder to queue every image")  # before any worker beat
    async with running_worker(worker_settings(bulk_settings)):
        summary = await asyncio.wait_for(feeding, 60)
    assert (summary.rendered, summary.skipped, summary.failed) == (0, 0, 4)
    assert "renders with settings" in summary.extra["refused"]
    assert not list((bulk_settings.storage_path / "thumbs").glob("*.webp"))  # refused, not rendered
    await engine.dispose()


# --- 5: finished runs point at --missing; a resume keeps the run's options -------------------------


async def test_a_finished_run_suggests_missing_for_what_was_added_since(
    bulk_settings: Settings, client: FleetClient
) -> None:
    settings = bulk_settings
    engine = await board(settings, 3, distinct=3)
    await engine.dispose()
    async with running_worker(worker_settings(settings)):
        out, err = await _finish(rethumb_cli(settings, "--json"))
        assert json.loads(out.splitlines()[-1])["rendered"] == 3, err
        again = rethumb_cli(settings, "--json")
        out, err = await _finish(again)
    assert again.returncode == 0 and "already finished" in err and "--missing" in err

    folder = settings.storage_path / "fullsize"
    async with running_worker(worker_settings(settings)):
        await _finish(rethumb_cli(settings, "--from-dir", str(folder), "--json"))
        images.jpeg(settings.storage_path, "added.jpg", 300, 200)
        changed = rethumb_cli(settings, "--from-dir", str(folder), "--json")
        _, err = await _finish(changed)
    assert changed.returncode == 2 and "--missing" in err


async def test_resuming_an_interrupted_force_run_keeps_rendering_everything(
    bulk_settings: Settings, client: FleetClient
) -> None:
    settings = bulk_settings.replace(bulk_max_queued=8, bulk_batch_size=4)
    engine = await board(settings, 40, distinct=4)
    async with running_worker(worker_settings(settings)):
        first = await rethumb(client.redis, settings, Selection(), engine=engine, poll_s=0.05)
    assert first.rendered == 40  # every output current from here on

    run = BulkRun(client.redis, settings.namespace, Selection().run_id(settings))
    forced = asyncio.create_task(
        rethumb(client.redis, settings, Selection(), engine=engine, force=True, poll_s=0.05)
    )

    async def topped_up() -> bool:
        state = await run.state()  # the forced run's, not the finished one's
        return state.get("finished") == "0" and int(state.get("fed", 0)) >= 8

    await wait_until(topped_up, what="the forced run to queue up to its bound")  # no worker: it stops there
    forced.cancel()
    with pytest.raises(asyncio.CancelledError):
        await forced
    async with running_worker(worker_settings(settings)):
        await wait_until(lambda: _img_bulk_live(settings, client), what="an img-bulk beat")
        resumed = await rethumb(client.redis, settings, Selection(), engine=engine, resume=True, poll_s=0.05)
    assert (resumed.rendered, resumed.skipped) == (40, 0)
    assert resumed.extra["resumed"] is True and resumed.extra["options"]["mode"] == "all"
    await engine.dispose()


# --- 6: --from-dir names the originals folder, or is refused ---------------------------------------


def test_a_folder_outside_the_originals_is_refused_up_front(bulk_settings: Settings, tmp_path: Path) -> None:
    elsewhere = tmp_path / "incoming"
    elsewhere.mkdir()
    (elsewhere / "alpha.png").write_bytes(b"\x89PNG")
    proc = rethumb_cli(bulk_settings, "--from-dir", str(elsewhere), "--dry-run", "--json")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and out == ""
    lines = _said(err)
    assert len(lines) == 1, err
    assert str(elsewhere) in lines[0] and str(bulk_settings.storage_path / "fullsize") in lines[0]
    assert "STORAGE_PATH" in lines[0]


# --- 8: no worker: a warning at once, a clear end, Ctrl-C with a hint ------------------------------


async def test_with_no_worker_the_feeder_warns_and_gives_up_with_a_message(bulk_settings: Settings) -> None:
    engine = await board(bulk_settings, 3, distinct=3)
    await engine.dispose()
    proc = rethumb_cli(bulk_settings, "--wait-for-workers", "3", "--json")
    assert proc.stderr is not None
    first = ""
    while first == "" or first.startswith("fleet: Redis "):  # within seconds, after the banner
        first = await asyncio.wait_for(asyncio.to_thread(proc.stderr.readline), 30)
    assert "no live worker serves the img-bulk queue" in first and bulk_settings.namespace in first
    out, err = await _finish(proc, 60)
    assert proc.returncode == 2 and out == ""
    assert "no worker served" in err and "--resume" in err and "Traceback" not in err


async def test_ctrl_c_prints_one_line_with_the_resume_hint(
    bulk_settings: Settings, client: FleetClient
) -> None:
    engine = await board(bulk_settings, 3, distinct=3)
    await engine.dispose()
    run = BulkRun(client.redis, bulk_settings.namespace, Selection().run_id(bulk_settings))
    proc = rethumb_cli(bulk_settings, "--wait-for-workers", "0", "--json")

    async def fed() -> bool:
        return int((await run.state()).get("fed", 0)) == 3

    await wait_until(fed, what="the feeder to queue the run")
    proc.send_signal(signal.SIGINT)
    out, err = await _finish(proc, 60)
    assert proc.returncode == 130 and out == ""
    lines = [line for line in _said(err) if "no live worker" not in line]
    assert len(lines) == 1 and "--resume" in lines[0], err
    assert "Traceback" not in err
