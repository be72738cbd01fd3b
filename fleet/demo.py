"""``fleet demo``: the main job end to end on embedded services.

Generates a sample archive and its rows in a SQLite board database, starts a private Redis,
a real img worker process and a light (IQDB + database) worker process, queues every vote
through the public client and renders the whole archive through the bulk path (``fleet
rethumb``, with its progress bar), then checks every expected output exists and decodes and
that variant flags and ratings were written, and prints one JSON summary as its last line.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from fleet import corpus, db
from fleet.board import Folder, VariantStatus
from fleet.bulk import Selection, rethumb
from fleet.client import FleetClient
from fleet.logging import configure_logging, get_logger
from fleet.processes import wait_healthy, worker_process
from fleet.progress import ProgressReporter
from fleet.registry import Queue
from fleet.services import embedded_defaults
from fleet.settings import Settings, get_settings

log = get_logger("fleet.demo")


def verify(root: Path, sample: corpus.Sample, medium: int, large: int, settings: Settings) -> str | None:
    """None when the outputs on disk and the flags in the database are right; else what is wrong."""
    import pyvips

    thumb_ext = "jpg" if settings.thumb_format == "jpeg" else settings.thumb_format
    thumb_box, ready = (settings.thumb_width, settings.thumb_height), VariantStatus.READY
    expected = [
        ("thumb", Folder.THUMBS, thumb_ext, thumb_box, ready),
        ("medium", Folder.MEDIUM, sample.ext, (settings.medium_edge, settings.medium_edge), medium),
        ("large", Folder.LARGE, sample.ext, (settings.large_edge, settings.large_edge), large),
    ]
    for variant, folder, ext, (width, height), flag in expected:
        if flag == VariantStatus.PENDING:
            return f"{variant} flag still PENDING"
        if flag == VariantStatus.NONE:  # the original is within the edge, or the rendition was not smaller
            continue
        if variant != "thumb" and sample.longest <= width:
            return f"{variant} READY for a {sample.longest} px original"
        path = root / folder / f"{sample.filename}.{ext}"
        try:
            image = pyvips.Image.new_from_file(str(path), fail_on="error")
            image.avg()  # forces a full decode
        except pyvips.Error as exc:
            return f"{folder}/{path.name} is missing or does not decode: {exc}"
        if image.width > width or image.height > height:
            return f"{folder}/{path.name} is {image.width}x{image.height}, over {width}x{height}"
    return None


async def seed_board(engine: AsyncEngine, samples: list[corpus.Sample], seed: int = 1) -> dict[int, int]:
    """Rows for the sample uploads (variants PENDING, as an API inserts them) and some votes;
    returns how many votes each voted image got."""
    rng = random.Random(seed)
    rows = [
        {"image_id": s.image_id, "filename": s.filename, "ext": s.ext, "width": s.width, "height": s.height,
         "medium": VariantStatus.PENDING, "large": VariantStatus.PENDING}
        for s in samples
    ]  # fmt: skip
    votes: dict[int, int] = {}
    ratings = []
    for sample in samples:
        for user in range(rng.choice((0, 0, 1, 3, 8))):
            ratings.append({"user_id": user + 1, "image_id": sample.image_id, "rating": rng.randint(1, 10)})
            votes[sample.image_id] = votes.get(sample.image_id, 0) + 1
    async with engine.begin() as conn:
        await conn.execute(sa.insert(db.images), rows)
        if ratings:
            await conn.execute(sa.insert(db.image_ratings), ratings)
    return votes


async def wait_for_rows(
    engine: AsyncEngine, where: sa.ColumnElement[bool], count: int, timeout_s: float
) -> int:
    """Until ``count`` images match ``where`` (or the timeout); returns how many do."""
    deadline = time.monotonic() + timeout_s
    while True:
        async with engine.connect() as conn:
            found = int(
                (
                    await conn.execute(sa.select(sa.func.count()).select_from(db.images).where(where))
                ).scalar_one()
            )
        if found >= count or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.1)


async def run_demo(images: int, root: Path, settings: Settings) -> dict[str, Any]:
    samples = corpus.plan(images)
    started = time.monotonic()
    corpus.generate(root, samples)
    log.info(
        "sample archive ready", images=images, root=str(root), seconds=round(time.monotonic() - started, 1)
    )
    engine = db.create_engine(settings)
    await db.create_schema(engine)
    votes = await seed_board(engine, samples)
    columns = db.images.c

    quiet = settings.replace(log_level="WARNING", metrics_port=0)  # keep the progress bar readable
    with worker_process(["img"], quiet), worker_process(["light"], quiet):
        async with await FleetClient.connect(settings) as client:
            for queue in (Queue.IMG, Queue.IMG_BULK, Queue.IQDB, Queue.DB):
                await wait_healthy(client, queue)
            log.info("workers up; queueing votes and the archive", pool=settings.pool_size)
            for image_id, count in votes.items():  # one call per vote, as the API makes them
                for _ in range(count):
                    await client.recalculate_rating(image_id)
            run = await rethumb(
                client.redis, settings, Selection(), engine=engine, progress=ProgressReporter()
            )
            settled = (columns.medium != VariantStatus.PENDING) & (columns.large != VariantStatus.PENDING)
            flags_written = await wait_for_rows(engine, settled, images, 60)
            ratings_recalculated = await wait_for_rows(
                engine, columns.image_id.in_(list(votes)) & (columns.num_ratings > 0), len(votes), 60
            )
        async with engine.connect() as conn:
            flags = {
                i: (m, g)
                for i, m, g in await conn.execute(sa.select(columns.image_id, columns.medium, columns.large))
            }
    await engine.dispose()

    problems: dict[str, str] = {}
    for sample in samples:
        problem = verify(root, sample, *flags[sample.image_id], settings)
        if problem:
            problems[f"{sample.filename}.{sample.ext}"] = problem
    for name, problem in list(problems.items())[:10]:
        log.error("image failed", file=name, problem=problem)
    return {
        "images": images,
        "rendered": min(run.rendered, images - len(problems)),
        "failed": max(run.failed, len(problems)),
        "seconds": run.seconds,
        "renders_per_s": run.images_per_s,
        "processes": settings.pool_size,
        "flags_written": flags_written,
        "ratings_recalculated": ratings_recalculated,
        "images_voted": len(votes),
    }


def main(images: int = 200, keep: bool = False) -> int:
    settings = get_settings()
    configure_logging(settings)
    root = Path(tempfile.mkdtemp(prefix="fleet-demo-"))
    try:
        with embedded_defaults(settings.replace(storage_path=root)) as settings:
            summary = asyncio.run(run_demo(images, root, settings))
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    if keep:
        summary["storage"] = str(root)
    print(json.dumps(summary), flush=True)
    complete = (
        summary["flags_written"] == images and summary["ratings_recalculated"] == summary["images_voted"]
    )
    return 0 if summary["failed"] == 0 and summary["rendered"] == images and complete else 1
