"""A small image-board API on fleet: upload, vote, job status. AN EXAMPLE, NOT A BOARD.

    EXAMPLE_API_TOKEN=... REDIS_URL=... DATABASE_URL=... STORAGE_PATH=... uvicorn examples.board_api:app

It shows how an API queues work through the fleet client; it has no users, sessions or
permissions. Its one guard is a shared secret: every write (upload, vote) needs
``Authorization: Bearer $EXAMPLE_API_TOKEN`` (401 without it; with the variable unset, every
write is refused), and a vote's ``user_id`` is taken on trust from whoever holds the token.
Do not expose it to the internet as it is.

The upload is streamed to a staging file in the storage folder in chunks, never past
``MAX_IMAGE_SIZE`` bytes (the board's variable, 32 MiB by default: 413 over it), stored
world-readable as the umask allows (the workers may run under another uid), then the row is
inserted and the render queued through the fleet client; when Redis is down the client raises
EnqueueError and the API answers 503 (after undoing the upload; the details go to the log,
not to the client), so no upload ever "succeeds" with no job behind it.
"""

from __future__ import annotations

import hmac
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Depends, FastAPI, File, HTTPException, Request, UploadFile
from pydantic import BaseModel, Field

from fleet import db
from fleet.board import Folder, VariantStatus
from fleet.client import lifespan as fleet_lifespan
from fleet.errors import EnqueueError, JobFailedError
from fleet.services import with_sqlite_default
from fleet.settings import get_settings

log = logging.getLogger("board_api")

ALLOWED = {"jpg", "jpeg", "png", "gif", "webp"}
CHUNK = 1 << 20


def _umask() -> int:
    """The process umask (read once, at import, while nothing else runs)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


STORED_MODE = 0o644 & ~_umask()
"""Originals are readable by the workers, which may run under another uid (the img image: 10001)."""


def max_image_size() -> int:
    """The board's MAX_IMAGE_SIZE (bytes), 32 MiB when unset."""
    return int(os.environ.get("MAX_IMAGE_SIZE") or 32 << 20)


def require_token(request: Request) -> None:
    """Writes need ``Authorization: Bearer $EXAMPLE_API_TOKEN``; unset, no write is allowed."""
    expected = os.environ.get("EXAMPLE_API_TOKEN", "")
    given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(
            401, "a bearer token (EXAMPLE_API_TOKEN) is required", {"WWW-Authenticate": "Bearer"}
        )


async def stage(file: UploadFile, folder: os.PathLike[str] | str) -> str:
    """Copy the upload to a temporary file in ``folder`` a chunk at a time; 413 (and nothing
    left behind) over MAX_IMAGE_SIZE. Returns the staging file's path."""
    limit = max_image_size()
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".upload-", delete=False) as tmp:
        try:
            size = 0
            while chunk := await file.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise HTTPException(413, f"upload over MAX_IMAGE_SIZE ({limit} bytes)")
                tmp.write(chunk)
        except BaseException:
            os.unlink(tmp.name)
            raise
    os.chmod(tmp.name, STORED_MODE)
    return tmp.name


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    settings = with_sqlite_default(get_settings())  # unset DATABASE_URL: the embedded SQLite
    app.state.db = db.create_engine(settings)
    try:
        async with fleet_lifespan(settings)(app) as state:  # app.state.fleet: the fleet client
            yield state
    finally:
        await app.state.db.dispose()


app = FastAPI(title="board on fleet", lifespan=lifespan)


async def insert_row(engine: Any, ext: str) -> tuple[int, str]:
    """The image's row, and its stored name (derived names come from it only)."""
    async with engine.begin() as conn:
        image_id = (
            await conn.execute(
                sa.insert(db.images).values(
                    filename="", ext=ext, medium=VariantStatus.PENDING, large=VariantStatus.PENDING
                )
            )
        ).inserted_primary_key[0]
        filename = f"{date.today():%Y-%m-%d}-{image_id}"
        await conn.execute(
            sa.update(db.images).where(db.images.c.image_id == image_id).values(filename=filename)
        )
    return int(image_id), filename


@app.post("/images", status_code=201, dependencies=[Depends(require_token)])
async def upload(request: Request, file: Annotated[UploadFile, File()]) -> dict[str, Any]:
    ext = (file.filename or "").rsplit(".", 1)[-1].lower()
    if ext not in ALLOWED:
        raise HTTPException(415, f"unsupported extension .{ext}")
    settings, engine, fleet = get_settings(), request.app.state.db, request.app.state.fleet
    folder = settings.storage_path / Folder.ORIGINALS
    folder.mkdir(parents=True, exist_ok=True)
    staged = await stage(file, folder)
    try:
        image_id, filename = await insert_row(engine, ext)
    except BaseException:
        os.unlink(staged)
        raise
    target = folder / f"{filename}.{ext}"
    os.replace(staged, target)
    try:
        job = await fleet.render_upload(image_id, filename, ext)
    except EnqueueError as exc:
        target.unlink(missing_ok=True)
        async with engine.begin() as conn:
            await conn.execute(sa.delete(db.images).where(db.images.c.image_id == image_id))
        log.warning("upload %s not queued: %s", image_id, exc)  # the details stay in the log
        raise HTTPException(503, "upload not accepted: the job queue is unavailable, try again") from exc
    return {"image_id": image_id, "filename": filename, "job_id": job.job_id}


class Vote(BaseModel):
    user_id: int = Field(ge=1)
    rating: int = Field(ge=1, le=10)


@app.post("/images/{image_id}/ratings", status_code=202, dependencies=[Depends(require_token)])
async def rate(image_id: int, vote: Vote, request: Request) -> dict[str, Any]:
    engine, fleet = request.app.state.db, request.app.state.fleet
    async with engine.begin() as conn:
        await conn.execute(sa.delete(db.image_ratings).where(
            db.image_ratings.c.image_id == image_id, db.image_ratings.c.user_id == vote.user_id))  # fmt: skip
        await conn.execute(
            sa.insert(db.image_ratings).values(image_id=image_id, user_id=vote.user_id, rating=vote.rating)
        )
    try:
        job = await fleet.recalculate_rating(image_id)
    except EnqueueError as exc:
        log.warning("rating of %s not queued: %s", image_id, exc)
        raise HTTPException(503, "vote stored, rating update not queued: try again") from exc
    return {"image_id": image_id, "job_id": job.job_id if job else None, "coalesced": job is None}


@app.get("/jobs/{job_id}")
async def job_status(job_id: str, request: Request) -> dict[str, Any]:
    fleet = request.app.state.fleet
    job = await fleet.job(job_id)
    status = (await job.status()).value
    answer: dict[str, Any] = {"job_id": job_id, "status": status}
    if status == "complete":
        try:
            answer["result"] = await job.result(timeout=1)
        except JobFailedError as exc:
            answer["error"] = {"type": exc.error_type, "message": exc.message}
    return answer
