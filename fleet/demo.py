"""``fleet demo``: the main job end to end on embedded services.

Generates a sample archive and its rows in a SQLite board database, starts a private Redis,
a real img worker process and a light (IQDB + database) worker process, queues every upload
and every vote through the public client, waits for each result, checks every expected
output exists and decodes, that variant flags and ratings were written, and prints one JSON
summary as its last line.
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
from arq.jobs import Job
from sqlalchemy.ext.asyncio import AsyncEngine

from fleet import corpus, db
from fleet.client import FleetClient
from fleet.errors import JobFailedError
from fleet.logging import configure_logging, get_logger
from fleet.processes import wait_healthy, worker_process
from fleet.registry import Queue
from fleet.services import embedded_defaults
from fleet.settings import Settings, get_settings

log = get_logger("fleet.demo")


async def _result(job: Job, timeout_s: float) -> dict[str, Any] | str:
    try:
        result: dict[str, Any] = await job.result(timeout=timeout_s, poll_delay=0.05)
    except JobFailedError as exc:
        return str(exc)
    return result


def verify(root: Path, sample: corpus.Sample, result: dict[str, Any], settings: Settings) -> str | None:
    """None when every expected output is there and decodes; else what is wrong."""
    import pyvips

    outputs = result["outputs"]
    expected = {"thumb": settings.thumb_size, "medium": settings.medium_edge, "large": settings.large_edge}
    for variant, edge in expected.items():
        out = outputs.get(variant)
        if out is None:
            return f"{variant} missing from the result"
        must_exist = variant == "thumb"
        if out["status"] == 0:  # NONE: allowed only for a variant the original does not exceed,
            if must_exist:  # or one whose rendition was not smaller than the original
                return "thumb is NONE"
            continue
        if not must_exist and sample.longest <= edge:
            return f"{variant} rendered for a {sample.longest} px original"
        try:
            image = pyvips.Image.new_from_file(str(root / out["path"]), fail_on="error")
            image.avg()  # forces a full decode
        except pyvips.Error as exc:
            return f"{out['path']} does not decode: {exc}"
        if max(image.width, image.height) > edge:
            return f"{out['path']} is {image.width}x{image.height}, over {edge}"
    return None


async def seed_board(engine: AsyncEngine, samples: list[corpus.Sample], seed: int = 1) -> dict[int, int]:
    """Rows for the sample uploads (variants PENDING, as an API inserts them) and some votes;
    returns how many votes each voted image got."""
    rng = random.Random(seed)
    rows = [
        {"image_id": s.image_id, "filename": s.filename, "ext": s.ext, "width": s.width, "height": s.height,
         "medium": 2, "large": 2}
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

    with worker_process(["img"], settings), worker_process(["light"], settings):
        async with await FleetClient.connect(settings) as client:
            for queue in (Queue.IMG, Queue.IQDB, Queue.DB):
                await wait_healthy(client, queue)
            log.info("workers up; queueing uploads and votes", pool=settings.pool_size)
            started = time.monotonic()
            jobs = [await client.render_upload(s.image_id, s.filename, s.ext) for s in samples]
            for image_id, count in votes.items():  # one call per vote, as the API makes them
                for _ in range(count):
                    await client.recalculate_rating(image_id)
            results = await asyncio.gather(*(_result(job, 600) for job in jobs))
            seconds = time.monotonic() - started
            flags_written = await wait_for_rows(
                engine, (columns.medium != 2) & (columns.large != 2), images, 60
            )
            ratings_recalculated = await wait_for_rows(
                engine, columns.image_id.in_(list(votes)) & (columns.num_ratings > 0), len(votes), 60
            )
    await engine.dispose()

    problems: dict[str, str] = {}
    for sample, result in zip(samples, results, strict=True):
        problem = result if isinstance(result, str) else verify(root, sample, result, settings)
        if problem:
            problems[f"{sample.filename}.{sample.ext}"] = problem
    for name, problem in list(problems.items())[:10]:
        log.error("upload failed", file=name, problem=problem)
    rendered = images - len(problems)
    return {
        "images": images,
        "rendered": rendered,
        "failed": len(problems),
        "seconds": round(seconds, 3),
        "renders_per_s": round(images / seconds, 2) if seconds else 0.0,
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
