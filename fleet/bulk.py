"""Bulk re-rendering of the archive (``fleet rethumb``): a bounded, resumable feeder.

One arq job per image does not scale (about 0.4 GB of Redis per million queued jobs, a 24 h
job expiry, uploads stuck behind the backlog). Instead the feeder walks the work list in id
order and keeps at most BULK_MAX_QUEUED images queued on ``img-bulk``, K per job, topping
up as workers drain it. Its cursor advances in the same Redis transaction that queues a
batch, so a feeder killed at any point resumes exactly where it stopped: no image is queued
twice, none is skipped. Workers record each image's outcome once in a per-run bitmap.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from arq.connections import ArqRedis
from arq.jobs import serialize_job
from arq.utils import timestamp_ms
from sqlalchemy.ext.asyncio import AsyncEngine

from fleet import db, serializer, wake
from fleet.board import PUBLIC_STATUSES, Folder
from fleet.errors import FleetError, InvalidPayloadError
from fleet.keys import (
    bulk_done_key,
    bulk_done_pattern,
    bulk_run_key,
    job_key,
    queue_key,
    render_settings_key,
)
from fleet.objects import BucketConfig, bucket_config, bucket_pair, buckets, first_line, open_bucket, refusal
from fleet.registry import MAX_IMAGE_ID, RENDER_BATCH, Queue, RenderBatch
from fleet.render_settings import settings_differ
from fleet.settings import Settings

OUTCOMES = ("rendered", "skipped", "failed")

BLOCK_BITS = 20
"""Each run's done-bitmap is split into blocks of 2^20 ids (128 KiB each), so a sparse or hostile
id costs one block, not a bitmap as long as the id."""

_RECORD = """
local ttl = tonumber(redis.call('HGET', KEYS[2], 'ttl_s')) or tonumber(ARGV[3])
local counted = 0
if redis.call('SETBIT', KEYS[1], ARGV[1], 1) == 0 then
    redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
    counted = 1
end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
return counted
"""

_REOPEN = """
if redis.call('SETBIT', KEYS[1], ARGV[1], 0) == 1 then
    redis.call('HINCRBY', KEYS[2], ARGV[2], -1)
    return 1
end
return 0
"""


async def settings_since(redis: ArqRedis, settings: Settings) -> float:
    """When the current render settings were first used (outputs older than this are stale)."""
    key = render_settings_key(settings.namespace, settings.render.fingerprint())
    await redis.set(key, time.time(), nx=True)
    return float(await redis.get(key))


class BulkRun:
    """A run's state in Redis: a hash of counters and cursor, and a bitmap of finished ids in
    blocks (``…:done:{block}``). Every key expires ``ttl_s`` after the run's last activity;
    the feeder stores its BULK_RUN_TTL_S in the hash, so workers refresh with the same."""

    def __init__(self, redis: ArqRedis, namespace: str, run_id: str, ttl_s: int | None = None) -> None:
        if not _RUN_ID.fullmatch(run_id):
            raise InvalidPayloadError(f"bulk run id must be 1 to 40 hex digits, got {run_id[:50]!r}")
        self.redis = redis
        self.run_id = run_id
        self.ttl_s = ttl_s or Settings().bulk_run_ttl_s
        self.key = bulk_run_key(namespace, run_id)

    def done_key(self, image_id: int) -> str:
        """The bitmap block holding ``image_id``'s bit (its offset is the low BLOCK_BITS bits)."""
        if not 0 <= image_id <= MAX_IMAGE_ID:
            raise InvalidPayloadError(f"image id {image_id} is outside 0..{MAX_IMAGE_ID}")
        return bulk_done_key(self.key, image_id >> BLOCK_BITS)

    async def state(self) -> dict[str, str]:
        raw = await self.redis.hgetall(self.key)  # type: ignore[misc]  # redis-py types: sync|async
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def save(self, mapping: dict[str, Any]) -> None:
        """Write fields of the run's hash and push its expiry back (it is active)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.key, mapping={**mapping, "ttl_s": self.ttl_s})
            pipe.expire(self.key, self.ttl_s)
            await pipe.execute()

    async def note(self, name: str, text: str) -> None:
        """Keep a worker's word on the run (e.g. why it refused a batch) for the summary."""
        await self.redis.hset(self.key, name, text)  # type: ignore[misc]  # redis-py types: sync|async

    async def unfinished(self, image_ids: list[int]) -> set[int]:
        """The ids among ``image_ids`` with no outcome recorded yet (one round trip)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for image_id in image_ids:
                pipe.getbit(self.done_key(image_id), _offset(image_id))
            bits = await pipe.execute()
        return {image_id for image_id, bit in zip(image_ids, bits, strict=True) if not bit}

    async def record(self, image_id: int, outcome: str) -> bool:
        """Count ``outcome`` for ``image_id`` unless it already has one; True if counted."""
        block, offset = self.done_key(image_id), str(_offset(image_id))
        counted = await self.redis.eval(_RECORD, 2, block, self.key, offset, outcome, str(self.ttl_s))  # type: ignore[misc]
        return bool(counted)

    async def reopen(self, image_id: int, outcome: str = "failed") -> bool:
        """Forget ``image_id``'s recorded ``outcome``, so a batch naming it renders it again
        (``fleet dead retry`` of a bulk image); True if it had one."""
        block, offset = self.done_key(image_id), str(_offset(image_id))
        reopened = await self.redis.eval(_REOPEN, 2, block, self.key, offset, outcome)  # type: ignore[misc]
        return bool(reopened)

    async def processed(self) -> int:
        values = await self.redis.hmget(self.key, list(OUTCOMES))  # type: ignore[misc]
        return sum(int(v or 0) for v in values)

    async def keys(self) -> list[str]:
        """Every key of this run (the hash and each bitmap block)."""
        pattern = bulk_done_pattern(self.key)
        blocks = [k.decode() async for k in self.redis.scan_iter(match=pattern, count=1000)]
        return [self.key, *blocks]

    async def delete(self) -> None:
        await self.redis.delete(*await self.keys())


_RUN_ID = re.compile(r"[0-9a-f]{1,40}")


def _offset(image_id: int) -> int:
    return image_id & ((1 << BLOCK_BITS) - 1)


# --- the work list ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """Which originals a run covers, and how."""

    ids: tuple[int, int] | None = None
    since: date | None = None
    until: date | None = None
    from_dir: Path | None = None
    from_prefix: str | None = None
    """``fullsize/`` (or a longer prefix under it) of the bucket, or of both of the board's
    buckets, instead of the ``images`` table."""
    variants: tuple[str, ...] = ()
    mode: str = "stale"
    """stale: skip originals whose outputs are current; missing: skip those whose outputs
    exist, however old; all: render everything."""
    reindex: str = "changed"

    def run_id(self, settings: Settings) -> str:
        described = {
            **asdict(self),
            "from_dir": str(self.from_dir) if self.from_dir else None,
            "fingerprint": settings.render.fingerprint(),
        }
        if self.from_prefix is None:  # runs from before prefixes keep their ids (and resume)
            del described["from_prefix"]
        text = json.dumps(described, default=str, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    @property
    def listed(self) -> bool:
        """Whether the work list is a listing (numbered by position, no board rows behind it)."""
        return self.from_dir is not None or self.from_prefix is not None


Item = tuple[int, str, str, bool]
"""(image id or listing position, stored filename, ext, in the public bucket)."""


@dataclass(frozen=True)
class Listing:
    """A folder's or bucket prefix's originals in name order, numbered by position, read in one pass."""

    items: list[Item]
    positions: list[int]
    fingerprint: str
    """A hash of every listed name and size: a resumed run checks the listing is unchanged."""


def list_folder(folder: Path) -> Listing:
    """One directory read and one stat per file: files with a suffix, dot-files left out."""
    with os.scandir(folder) as entries:
        files = sorted(
            (e.name, e.stat().st_size) for e in entries if e.is_file() and not e.name.startswith(".")
        )
    return _numbered([(name, size, None, True) for name, size in files])


Listed = tuple[str, int, str | None, bool]
"""(file name, size, the bucket it was listed in or None for a folder, in the public bucket)."""


def _numbered(files: list[Listed]) -> Listing:
    """Files in name order, numbered from 1 (names without a suffix keep their number, unlisted)."""
    items: list[Item] = []
    digest = hashlib.sha1()
    for position, (name, size, bucket, public) in enumerate(files, start=1):
        path = Path(name)
        if path.suffix:
            items.append((position, path.stem, path.suffix.lstrip("."), public))
            where = f"{bucket}\0" if bucket is not None else ""
            digest.update(f"{where}{name}\0{size}\n".encode(errors="surrogateescape"))
    return Listing(items, [item[0] for item in items], digest.hexdigest()[:16])


async def list_prefix(settings: Settings, prefix: str) -> Listing:
    """The originals under ``prefix`` in the bucket (each of the board's two, its items marked
    with the one it is in), by batched listing: a request per 1,000 keys, sizes included."""
    pair, one = bucket_pair(settings), bucket_config(settings)
    sources = [(pair.public, True), (pair.private, False)] if pair else [(one, True)] if one else []
    files: list[Listed] = []
    for config, public in sources:
        assert config is not None
        try:
            found = await _originals(config, prefix)
        except Exception as exc:
            refused = refusal(config, "list", prefix, exc)
            raise FleetError(
                refused or f"cannot list {prefix} in bucket {config.bucket}: {first_line(exc)}"
            ) from exc
        files += [(name, size, config.bucket, public) for name, size in found]
    files.sort(key=lambda f: (f[0], not f[3]))
    return _numbered(files)


async def _originals(config: BucketConfig, prefix: str) -> list[tuple[str, int]]:
    """(name, size) of the objects directly under ``prefix``, dot-files left out. Prefixes are
    whole path segments to obstore, so fullsize/ is listed from just before ours."""
    import obstore

    start = prefix[:-1] if prefix != ORIGINALS_PREFIX else None
    found: list[tuple[str, int]] = []
    async for page in obstore.list(open_bucket(config), Folder.ORIGINALS, offset=start, chunk_size=1000):
        for meta in page:
            key = str(meta["path"])
            if not key.startswith(prefix):
                if key > prefix:
                    return found  # past the prefix: no more pages needed
                continue
            name = key.removeprefix(ORIGINALS_PREFIX)
            if "/" not in name and not name.startswith("."):
                found.append((name, int(meta["size"])))
    return found


ORIGINALS_PREFIX = f"{Folder.ORIGINALS}/"
"""Where workers read originals from, in a folder or a bucket."""


class WorkList:
    """The selection as a sequence ordered by id, read a batch at a time after a cursor."""

    def __init__(
        self, selection: Selection, engine: AsyncEngine | None, settings: Settings | None = None
    ) -> None:
        self.selection = selection
        self.engine = engine
        self.settings = settings
        """Where a prefix is listed (its buckets); and with the board's two, the table's
        statuses choose each image's."""
        self._listing: Listing | None = None

    def _where(self) -> list[sa.ColumnElement[bool]]:
        c, s = db.images.c, self.selection
        clauses: list[sa.ColumnElement[bool]] = []
        if s.ids:
            clauses += [c.image_id >= s.ids[0], c.image_id <= s.ids[1]]
        if s.since:  # stored names start with the upload date: 2025-12-01-123
            clauses.append(c.filename >= s.since.isoformat())
        if s.until:
            clauses.append(c.filename < (s.until + timedelta(days=1)).isoformat())
        return clauses

    async def listing(self) -> Listing | None:
        """The folder or prefix, listed once per run (each page is a slice of it, not a new
        scan); None for the ``images`` table."""
        if self._listing is None:
            if self.selection.from_dir is not None:
                self._listing = list_folder(self.selection.from_dir)
            elif self.selection.from_prefix is not None:
                assert self.settings is not None
                self._listing = await list_prefix(self.settings, self.selection.from_prefix)
        return self._listing

    async def fingerprint(self) -> str | None:
        """What the run's work list was made of, where it can change under a run (a listing)."""
        listing = await self.listing()
        return listing.fingerprint if listing is not None else None

    async def count(self) -> int:
        if (listing := await self.listing()) is not None:
            return len(listing.items)
        assert self.engine is not None
        async with self.engine.connect() as conn:
            query = sa.select(sa.func.count()).select_from(db.images).where(*self._where())
            return int((await conn.execute(query)).scalar_one())

    async def after(self, cursor: int, limit: int) -> list[Item]:
        if (listing := await self.listing()) is not None:
            start = bisect.bisect_right(listing.positions, cursor)
            return listing.items[start : start + limit]
        assert self.engine is not None
        c = db.images.c
        query = (
            sa.select(c.image_id, c.filename, c.ext, c.status)
            .where(c.image_id > cursor, *self._where())
            .order_by(c.image_id)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [(int(i), str(f), str(e), int(status) in PUBLIC_STATUSES) for i, f, e, status in rows]


# --- the feeder ----------------------------------------------------------------------------------


@dataclass
class Summary:
    """What ``fleet rethumb`` prints at the end (``--json``: one object, ``extra`` merged in
    last). ``skipped`` images were already current (with --missing: present); ``failed`` ones
    were dead-lettered one by one, each with its reason; ``seconds`` and ``images_per_s`` count
    this call only, not a resumed run's earlier part."""

    run_id: str
    total: int = 0
    rendered: int = 0
    skipped: int = 0
    failed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    """The options the run started with, whether it was resumed, why a worker refused it."""
    seconds: float = 0.0
    images_per_s: float = 0.0
    already_finished: bool = False
    dry_run: bool = False

    def as_json(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "extra"}
        return {**data, **self.extra}


class Progress(Protocol):
    def __call__(self, counts: dict[str, int], elapsed_s: float, final: bool = False) -> None: ...


async def _enqueue_batches(
    redis: ArqRedis, settings: Settings, run: BulkRun, batches: list[RenderBatch]
) -> None:
    """Queue batches and move the cursor past the last of them, in one transaction."""
    now = timestamp_ms()
    queue = queue_key(settings.namespace, RENDER_BATCH.queue)
    async with redis.pipeline(transaction=True) as pipe:
        for payload in batches:
            job_id = uuid.uuid4().hex
            job = serialize_job(
                RENDER_BATCH.name,
                (RENDER_BATCH.encode(payload),),
                {},
                None,
                now,
                serializer=serializer.serialize,
            )
            pipe.psetex(job_key(job_id), settings.job_expiry_s * 1000, job)
            pipe.zadd(queue, {job_id: now})
        wake.push(pipe, queue, len(batches))
        pipe.hset(run.key, "cursor", str(batches[-1].image_ids[-1]))
        pipe.hincrby(run.key, "fed", sum(len(b.image_ids) for b in batches))
        pipe.expire(run.key, run.ttl_s)
        await pipe.execute()
    replicas = settings.confirm_replicas
    if replicas and await wake.nudge(redis, queue, replicas, settings.enqueue_wait_s) < replicas:
        raise FleetError(
            f"batches queued, but not held by {replicas} replicas after {settings.enqueue_wait_s:g} s "
            f"(ENQUEUE_REPLICAS): run {run.run_id} is kept; --resume goes on from what Redis holds"
        )


async def rethumb(
    redis: ArqRedis,
    settings: Settings,
    selection: Selection,
    *,
    engine: AsyncEngine | None = None,
    resume: bool = False,
    force: bool = False,
    dry_run: bool = False,
    progress: Progress | None = None,
    poll_s: float = 0.2,
    wait_for_workers_s: float = 60.0,
    warn: Callable[[str], None] | None = None,
) -> Summary:
    """Feed a bulk run to the img-bulk queue and wait for it to finish.

    ``force`` starts the run over and renders everything, current outputs included. A resumed
    run keeps the options it started with (mode, variants, reindex), whatever this call says.
    With no live img-bulk worker for ``wait_for_workers_s`` (0: for ever) the feeder stops with
    a FleetError (the run stays resumable); ``warn`` hears at once that none serves."""
    if selection.from_dir is not None:
        check_folder(settings, selection.from_dir)
    if selection.from_prefix is not None:
        check_prefix(settings, selection.from_prefix)
    work = WorkList(selection, engine, settings)
    run = BulkRun(redis, settings.namespace, selection.run_id(settings), settings.bulk_run_ttl_s)
    state = await run.state()
    if dry_run:
        return Summary(run.run_id, total=await work.count(), dry_run=True)
    if (finished := await _finished_or_refused(work, run, state, resume, force)) is not None:
        return finished
    watch = WorkerWatch(redis, settings, wait_for_workers_s, warn)
    await watch.refuse_other_settings()
    resuming = bool(state) and not force
    state = await _open(run, work, selection, state, force)
    options = _run_options(state, selection)
    report = _Report(run, watch, progress)
    counts_at_start = await run.processed()
    two_buckets = bucket_pair(settings) is not None
    batch = functools.partial(
        _batch, run.run_id, selection, options, settings.render.fingerprint(), two_buckets
    )
    await _feed(redis, settings, run, work, int(state["cursor"]), batch, report, poll_s)
    while (await report())[1] < int(state["total"]):
        await asyncio.sleep(poll_s)
    await report(final=True)
    return await _close(run, report.started, counts_at_start, options, resuming)


async def _finished_or_refused(
    work: WorkList, run: BulkRun, state: dict[str, str], resume: bool, force: bool
) -> Summary | None:
    """The summary of a run already finished; a FleetError for an interrupted one that is
    neither resumed nor forced; None to go on."""
    if state and not force:
        await _check_unchanged(work, run, state)
    if state.get("finished") == "1" and not force:
        return _summary(run.run_id, state, already_finished=True)
    if state and state.get("finished") != "1" and not (resume or force):
        raise FleetError(
            f"run {run.run_id} was interrupted: pass --resume to continue it, or --force to start over"
        )
    return None


async def _open(
    run: BulkRun, work: WorkList, selection: Selection, state: dict[str, str], force: bool
) -> dict[str, str]:
    """The run's state: as it was when resumed, else written afresh (a new run, or --force)."""
    if state and not force:
        return state
    await run.delete()
    total = await work.count()
    fresh: dict[str, Any] = {
        "total": total,
        "cursor": 0,
        "fed": 0,
        "started_at": time.time(),
        "finished": 0,
        "mode": "all" if force else selection.mode,
        "variants": ",".join(selection.variants),
        "reindex": selection.reindex,
    }
    if (listing := await work.fingerprint()) is not None:
        fresh["listing"] = listing
    await run.save({**fresh, **dict.fromkeys(OUTCOMES, 0)})
    return await run.state()


async def _close(
    run: BulkRun, started: float, counts_at_start: int, options: dict[str, Any], resuming: bool
) -> Summary:
    """Mark the run finished; its summary, with the rate of this call's part of it."""
    await run.save({"finished": 1, "finished_at": time.time()})
    summary = _summary(run.run_id, await run.state())
    summary.seconds = round(time.monotonic() - started, 3)
    done_now = summary.rendered + summary.skipped + summary.failed - counts_at_start
    summary.images_per_s = round(done_now / summary.seconds, 2) if summary.seconds else 0.0
    summary.extra["options"] = {**options, "variants": list(options["variants"])}
    if resuming:
        summary.extra["resumed"] = True  # with the options the run started with
    return summary


class _Report:
    """A run's progress while it is fed: shown, and a check that a worker still serves it."""

    def __init__(self, run: BulkRun, watch: WorkerWatch, progress: Progress | None) -> None:
        self.run, self.watch, self.progress = run, watch, progress
        self.started = time.monotonic()

    async def __call__(self, final: bool = False) -> tuple[int, int]:
        """Show progress; returns (fed, processed) from one read of the run's state."""
        current = await self.run.state()
        counts = {k: int(current.get(k, 0)) for k in ("total", "fed", *OUTCOMES)}
        if self.progress is not None:
            self.progress(counts, time.monotonic() - self.started, final)
        if not final:
            await self.watch.served(self.run.run_id)
        return counts["fed"], sum(counts[o] for o in OUTCOMES)


def _batch(
    run_id: str,
    selection: Selection,
    options: dict[str, Any],
    fingerprint: str,
    two_buckets: bool,
    items: list[Item],
) -> RenderBatch:
    """One job of the run: ``items`` with the options the run started with; with the board's
    two buckets, which one each image is in."""
    return RenderBatch(
        run_id=run_id,
        image_ids=[item[0] for item in items],
        filenames=[item[1] for item in items],
        exts=[item[2] for item in items],
        variants=list(options["variants"]),
        mode=options["mode"],
        reindex=options["reindex"],
        with_db=not selection.listed,
        fingerprint=fingerprint,
        public=[item[3] for item in items] if two_buckets else None,
    )


async def _feed(
    redis: ArqRedis,
    settings: Settings,
    run: BulkRun,
    work: WorkList,
    cursor: int,
    batch: Callable[[list[Item]], RenderBatch],
    report: _Report,
    poll_s: float,
) -> None:
    """Queue the work list after ``cursor``, batch by batch, keeping at most BULK_MAX_QUEUED
    images queued ahead of the workers."""
    size = settings.bulk_batch_size
    pending: list[RenderBatch] = []  # read from the work list, not yet queued
    async for page in _pages(work, cursor, size * PAGE_BATCHES):
        pending += [batch(page[k : k + size]) for k in range(0, len(page), size)]
        while pending:
            fed, processed = await report()
            room = settings.bulk_max_queued - (fed - processed)
            if room <= 0:
                await asyncio.sleep(poll_s)  # bounded: wait for the workers to drain
                continue
            fits = max(1, min(len(pending), room // size))  # at least one batch, then by room
            await _enqueue_batches(redis, settings, run, pending[:fits])
            pending = pending[fits:]


def _run_options(state: dict[str, str], selection: Selection) -> dict[str, Any]:
    """The options a run started with (a run from before they were stored: the selection's)."""
    variants = state.get("variants")
    return {
        "mode": state.get("mode") or selection.mode,
        "variants": tuple(v for v in variants.split(",") if v)
        if variants is not None
        else selection.variants,
        "reindex": state.get("reindex") or selection.reindex,
    }


def check_folder(settings: Settings, folder: Path) -> None:
    """Workers read originals from STORAGE_PATH/fullsize only: another folder would list its
    files, then fail every one of them as a missing original."""
    root = settings.storage_path / Folder.ORIGINALS
    if not folder.is_dir():
        raise FleetError(f"--from-dir {folder} is not a folder")
    if folder.resolve() != root.resolve():
        raise FleetError(
            f"--from-dir {folder} is not the originals folder {root} (STORAGE_PATH/fullsize): workers "
            "read originals only from there; move or link the files into it, or set STORAGE_PATH to "
            "the root that holds this folder as fullsize/"
        )


def check_prefix(settings: Settings, prefix: str) -> None:
    """Workers read originals from fullsize/ in the bucket(s) of STORAGE_URL only."""
    if not buckets(settings):
        raise FleetError(
            f"--from-prefix {prefix} lists a bucket, and STORAGE_URL is not one (it is the folder "
            f"STORAGE_PATH={settings.storage_path}): use --from-dir for a folder"
        )
    if not prefix.startswith(ORIGINALS_PREFIX):
        raise FleetError(
            f"--from-prefix {prefix} is not under {ORIGINALS_PREFIX}: workers read originals only from "
            f"there; give {ORIGINALS_PREFIX} (all of them) or a longer prefix, e.g. {ORIGINALS_PREFIX}2025-"
        )


class WorkerWatch:
    """Whether live replicas serve the img-bulk queue, and with this feeder's render settings:
    a feeder with no worker (wrong NAMESPACE, none started yet, the stock arq command without
    the bulk settings) says so at once and gives up after ``wait_s`` instead of waiting for ever."""

    def __init__(
        self, redis: ArqRedis, settings: Settings, wait_s: float, warn: Callable[[str], None] | None
    ) -> None:
        self.redis, self.settings, self.wait_s, self.warn = redis, settings, wait_s, warn
        self.missing_since: float | None = None
        self.next_check = 0.0

    async def refuse_other_settings(self) -> None:
        """Refuse to start when live img-bulk replicas render with other settings: their
        outputs would count as current, or they would refuse every batch."""
        from fleet.health import beats, check

        live = (await check(self.redis, self.settings, Queue.IMG_BULK)).live
        ours = self.settings.render.by_name()
        infos = await beats(self.redis, self.settings, Queue.IMG_BULK, live)
        other = {
            name: info["render"]
            for name, info in zip(live, infos, strict=True)
            if info.get("render", ours) != ours
        }
        if other:
            replica, theirs = next(iter(other.items()))
            raise FleetError(
                f"{len(other)} of {len(live)} live img-bulk workers render with other settings "
                f"(e.g. {replica}: {settings_differ(ours, theirs)}): restart them with this feeder's "
                "settings (or run rethumb with theirs); nothing was queued"
            )

    async def served(self, run_id: str) -> None:
        """Checked at most once a second: warn when no live replica serves img-bulk, and stop
        after ``wait_s`` without one (the run stays resumable)."""
        from fleet.health import check

        now = time.monotonic()
        if now < self.next_check:
            return
        self.next_check = now + 1.0
        if (await check(self.redis, self.settings, Queue.IMG_BULK)).live:
            self.missing_since = None
            return
        where = f"the img-bulk queue of NAMESPACE={self.settings.namespace}"
        if self.missing_since is None:
            self.missing_since = now
            if self.warn is not None:
                limit = f"for {self.wait_s:g} s" if self.wait_s else "for ever"
                self.warn(
                    f"no live worker serves {where}: start `fleet worker img` (or the arq "
                    f"BulkWorkerSettings), or check NAMESPACE and REDIS_URL; waiting {limit}"
                )
        elif self.wait_s and now - self.missing_since >= self.wait_s:
            raise FleetError(
                f"no worker served {where} for {self.wait_s:g} s: start `fleet worker img` with the "
                f"same NAMESPACE and REDIS_URL, then `fleet rethumb … --resume` continues run {run_id}"
            )


async def _check_unchanged(work: WorkList, run: BulkRun, state: dict[str, str]) -> None:
    """Refuse to go on with a folder or prefix run whose listing changed: its positions no
    longer name the same files, and a new file would be skipped while the run reports success."""
    listing = await work.listing()
    if listing is None or state.get("listing") == listing.fingerprint:
        return
    where = work.selection.from_dir or work.selection.from_prefix
    raise FleetError(
        f"{where} changed since run {run.run_id} started (files added, removed or "
        f"resized; {state.get('total', '?')} then, {len(listing.items)} now): pass --force to "
        "start this run over, or --missing for a new run that renders only what has no outputs"
    )


PAGE_BATCHES = 32
"""Batches read from the work list per query, and queued per transaction when there is room."""


async def _pages(work: WorkList, cursor: int, size: int) -> AsyncIterator[list[Item]]:
    while items := await work.after(cursor, size):
        yield items
        cursor = items[-1][0]


def _summary(run_id: str, state: dict[str, str], already_finished: bool = False) -> Summary:
    return Summary(
        run_id,
        total=int(state.get("total", 0)),
        rendered=int(state.get("rendered", 0)),
        skipped=int(state.get("skipped", 0)),
        failed=int(state.get("failed", 0)),
        already_finished=already_finished,
        extra={"refused": state["refused"]} if "refused" in state else {},
    )
