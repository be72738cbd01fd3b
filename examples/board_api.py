"""A small image-board API on fleet: upload, vote, job status.

    REDIS_URL=... DATABASE_URL=... STORAGE_PATH=... uvicorn examples.board_api:app

The upload stores the original, inserts the row and queues the render through the fleet
client; when Redis is down the client raises EnqueueError and the API answers 503 (after
undoing the upload), so no upload ever "succeeds" with no job behind it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date
from typing import Annotated, Any

import sqlalchemy as sa
from arq.jobs import Job
from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from pydantic import BaseModel, Field

from fleet import db
from fleet.client import lifespan as fleet_lifespan
from fleet.errors import EnqueueError, JobFailedError
from fleet.settings import get_settings

log = logging.getLogger("board_api")

ALLOWED = {"jpg", "jpeg", "png", "gif", "webp"}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    settings = get_settings()
    app.state.db = db.create_engine(settings)
    try:
        async with fleet_lifespan(settings)(app) as state:  # app.state.fleet: the fleet client
            yield state
    finally:
        await app.state.db.dispose()


app = FastAPI(title="board on fleet", lifespan=lifespan)


@app.post("/images", status_code=201)
async def upload(request: Request, file: Annotated[UploadFile, File()]) -> dict[str, Any]:
    ext = (file.filename or "").rsplit(".", 1)[-1].lower()
    if ext not in ALLOWED:
        raise HTTPException(415, f"unsupported extension .{ext}")
    settings, engine, fleet = get_settings(), request.app.state.db, request.app.state.fleet
    async with engine.begin() as conn:
        image_id = (
            await conn.execute(sa.insert(db.images).values(filename="", ext=ext, medium=2, large=2))
        ).inserted_primary_key[0]
        filename = f"{date.today():%Y-%m-%d}-{image_id}"  # the stored name: derived names come from it only
        await conn.execute(
            sa.update(db.images).where(db.images.c.image_id == image_id).values(filename=filename)
        )
    target = settings.storage_path / "fullsize" / f"{filename}.{ext}"
    target.parent.mkdir(parents=True, exist_ok=True)
    data = await file.read()
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, target)
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


@app.post("/images/{image_id}/ratings", status_code=202)
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
    job = Job(job_id, fleet.redis, _deserializer=fleet.redis.job_deserializer)
    status = (await job.status()).value
    answer: dict[str, Any] = {"job_id": job_id, "status": status}
    if status == "complete":
        try:
            answer["result"] = await job.result(timeout=1)
        except JobFailedError as exc:
            answer["error"] = {"type": exc.error_type, "message": exc.message}
    return answer
