"""Job functions of the light queues: thin adapters from payloads to ``database`` and ``iqdb``."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine

from fleet.board import utc_now
from fleet.db import BoardSchema, SchemaProbe
from fleet.errors import PermanentError, TransientError
from fleet.keys import rating_prior_key
from fleet.objects import BucketConfig, buckets, first_line, missing_object, open_bucket, refusal
from fleet.paths import UnsafePathError, stored_file, stored_key
from fleet.registry import (
    DELETE_FROM_IQDB,
    INDEX_IQDB,
    RECALCULATE_RATING,
    WRITE_VARIANT_FLAGS,
    ImageRef,
    IqdbIndex,
    VariantFlags,
)
from fleet.settings import Settings
from fleet.worker import Context, handles
from ratingworker import database
from ratingworker.iqdb import IqdbClient

if TYPE_CHECKING:
    from obstore.store import S3Store

log = logging.getLogger("ratingworker.jobs")


class LightContext(Context, total=False):
    """A light worker's ``ctx``: the board's database, and for the IQDB worker its client and
    where the JPEGs are read (absent with IQDB_URL unset)."""

    db: AsyncEngine
    schema: SchemaProbe
    """The board's optional columns, probed once (again at the first job if the database was
    away at start-up)."""
    db_watch: asyncio.Task[None]
    """The database check behind the replica's health (workers only, not ``fleet cron``)."""
    iqdb: IqdbClient
    jpegs: JpegSource


@handles(WRITE_VARIANT_FLAGS)
async def write_variant_flags(ctx: LightContext, payload: VariantFlags) -> None:
    location = payload.r2_location
    if location is not None and not (await _schema(ctx)).can("r2_location"):
        location = None  # a board without the column: the flags alone
    await database.write_variant_flags(
        ctx["db"], payload.image_id, payload.medium, payload.large, r2_location=location
    )


@handles(RECALCULATE_RATING)
async def recalculate_rating(ctx: LightContext, payload: ImageRef) -> None:
    prior = await cached_prior(ctx)
    await database.recalculate_rating(ctx["db"], payload.image_id, prior)


async def cached_prior(ctx: LightContext) -> database.Prior:
    """The global prior, computed at most once per RATING_PRIOR_TTL_S across all replicas."""
    settings = ctx["settings"]
    key = rating_prior_key(settings.namespace)
    cached = await ctx["redis"].get(key)
    if cached is not None:
        weight, mean = json.loads(cached)
        return database.Prior(weight, mean)
    prior = await database.global_prior(ctx["db"])
    await ctx["redis"].set(key, json.dumps([prior.weight, prior.mean]), ex=settings.rating_prior_ttl_s)
    return prior


class JpegSource:
    """Where the IQDB JPEGs are read: the folder STORAGE_PATH, or the bucket(s) of STORAGE_URL
    (the img workers wrote them there, under the same ``iqdb/{filename}.jpg`` key). With the
    board's two buckets the job does not say which: the public one is asked first."""

    def __init__(self, root: Path, buckets: tuple[BucketConfig, ...]) -> None:
        self.root = root
        self.buckets = [(bucket, open_bucket(bucket)) for bucket in buckets]

    @classmethod
    def for_settings(cls, settings: Settings) -> JpegSource:
        return cls(settings.storage_path, buckets(settings))

    async def read(self, relative: str) -> bytes:
        """The file's bytes. An unsafe path, a missing file, a missing bucket or refused
        credentials fail for good; a bucket server that is down is retried."""
        try:
            key = stored_key(relative)
            if not self.buckets:
                return await asyncio.to_thread(stored_file(self.root, key).read_bytes)
        except UnsafePathError as exc:
            raise PermanentError(str(exc), error_type="UnsafePathError") from exc
        except FileNotFoundError as exc:
            raise PermanentError(f"{relative} does not exist", error_type="MissingThumbnail") from exc
        for bucket, client in self.buckets:
            found = await _get(bucket, client, key)
            if found is not None:
                return found
        names = " or ".join(bucket.bucket for bucket, _ in self.buckets)
        raise PermanentError(f"{key} is not in bucket {names}", error_type="MissingThumbnail")


async def _get(bucket: BucketConfig, client: S3Store, key: str) -> bytes | None:
    """One GET of ``key`` (None when the object is not there), its faults sorted as the render
    side sorts them."""
    import obstore

    try:
        result = await obstore.get_async(client, key)
        return bytes(await result.bytes_async())
    except Exception as exc:
        if missing_object(exc):
            return None
        refused = refusal(bucket, "read", key, exc)
        if refused is not None:
            raise PermanentError(refused, error_type="BucketRefusedError") from exc
        where = f"bucket {bucket.bucket} at {bucket.endpoint or 'AWS S3'}"
        raise TransientError(f"cannot read {key} in {where}: {first_line(exc)}") from exc


def _source(ctx: LightContext) -> JpegSource:
    """The worker's source, opened at start-up (or now, for a context made by hand)."""
    source = ctx.get("jpegs")
    if source is None:
        source = ctx["jpegs"] = JpegSource.for_settings(ctx["settings"])
    return source


@handles(INDEX_IQDB)
async def index_iqdb(ctx: LightContext, payload: IqdbIndex) -> dict[str, Any]:
    iqdb = ctx.get("iqdb")
    if iqdb is None:
        return {"skipped": "IQDB_URL not set"}
    jpeg = await _source(ctx).read(payload.path)
    digest = await iqdb.add(payload.image_id, jpeg)
    stored = await database.store_iqdb_hash(ctx["db"], await _schema(ctx), payload.image_id, digest)
    return {"image_id": payload.image_id, "hash_chars": len(digest), "hash_stored": stored}


@handles(DELETE_FROM_IQDB)
async def delete_from_iqdb(ctx: LightContext, payload: ImageRef) -> dict[str, Any]:
    iqdb = ctx.get("iqdb")
    if iqdb is None:
        return {"skipped": "IQDB_URL not set"}
    existed = await iqdb.delete(payload.image_id)
    await database.store_iqdb_hash(ctx["db"], await _schema(ctx), payload.image_id, None)
    return {"image_id": payload.image_id, "existed": existed}


async def _schema(ctx: LightContext) -> BoardSchema:
    return await ctx["schema"].get()


# --- cron jobs: each takes only the worker's context, so `fleet cron NAME` can run it now ---


async def close_expired_reviews(ctx: LightContext) -> dict[str, int]:
    """Settle reviews past their deadline (hourly by default, like the board's own cron)."""
    settings = ctx["settings"]
    run = await database.close_expired_reviews(
        ctx["db"],
        await _schema(ctx),
        utc_now(),
        settings.review_quorum,
        timedelta(days=settings.review_extension_days),
    )
    log.info("reviews settled: %s", run)
    return {"closed_keep": run.closed_keep, "closed_remove": run.closed_remove, "extended": run.extended}


async def prune_admin_actions(ctx: LightContext) -> dict[str, int]:
    """Delete audit rows older than ADMIN_ACTION_RETENTION_DAYS (daily)."""
    settings = ctx["settings"]
    retention = timedelta(days=settings.admin_action_retention_days)
    deleted = await database.prune_admin_actions(ctx["db"], utc_now(), retention)
    log.info("admin_actions pruned: %d older than %s days", deleted, retention.days)
    return {"deleted": deleted}
