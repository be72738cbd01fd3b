"""Job functions of the img queue: thin adapters from a payload to the render backend."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from fleet.board import PUBLIC_STATUSES, R2Location, VariantStatus
from fleet.bulk import BulkRun
from fleet.client import FleetClient
from fleet.errors import EnqueueError, InvalidPayloadError, PermanentError, TransientError
from fleet.failures import backoff_s
from fleet.keys import render_lost_key
from fleet.objects import bucket_pair
from fleet.paths import UnsafePathError
from fleet.registry import RENDER_BATCH, RENDER_UPLOAD, RenderBatch, RenderUpload
from fleet.settings import Settings
from fleet.worker import Context, dead_letter, handles, job_try
from imgworker.backend import Priority, RenderBackend, RenderLost
from imgworker.config import render_options
from imgworker.render import RenderError, RenderOptions, RenderRequest, RenderResult, current
from imgworker.render.storage import Where


class ImgContext(Context, total=False):
    """An img worker's ``ctx``: the render pool, shared by its two queues (``SharedPool``)."""

    backend: RenderBackend
    storage: Where
    """Where renders read and write; a bulk batch's skip check lists it from this process."""
    settings_since: float | None
    """When the render settings last changed (``fleet.bulk.settings_since``): a skip check
    counts outputs older than that as stale."""


async def raise_for_failure(ctx: ImgContext, result: RenderResult) -> None:
    """A failed render becomes a job failure: permanent for bad input, transient otherwise.
    A medium or large that failed alone fails the job the same way (its message names the
    variant), after the follow-ups of what was produced are queued.

    A render whose process crashed or was killed at its timeout is retried once; if the same
    original loses its process again, the input is to blame and the job is dead-lettered."""
    if result.ok:
        return
    message = f"{result.file}: {result.error}"
    if isinstance(result, RenderLost):
        key = render_lost_key(ctx["settings"].namespace, result.file)
        async with ctx["redis"].pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, 86400)
            losses, _ = await pipe.execute()
        if losses >= 2:
            raise PermanentError(
                f"{message} (the second time for this original)", error_type=result.error_type
            )
    error = PermanentError if result.permanent else TransientError
    raise error(message, error_type=result.error_type)


async def queue_follow_ups(
    client: FleetClient,
    result: RenderResult,
    reindex: str = "always",
    *,
    last_try: bool = False,
    r2_location: int | None = None,
) -> None:
    """Flags and IQDB right after the render, no fixed delay: the thumbnail exists now.

    Flags are written for the variants this render produced: READY or NONE, NONE for one
    that failed for good (the board serves the original), PENDING for one that failed
    transiently while a retry may still make it; on the ``last_try`` nothing will, so NONE.
    IQDB is told when ``reindex`` is "always", or "changed" and the thumbnail's bytes changed.
    ``r2_location`` (the board's bucket the outputs went to) travels with the flags.
    If queueing fails the render job is retried (rendering again is harmless): files are never
    left on disk with no flags."""
    outputs = result.outputs
    flags = {
        v: int(VariantStatus.NONE if outputs[v].failed and last_try else outputs[v].status)
        for v in ("medium", "large")
        if v in outputs
    }
    try:
        if flags or r2_location is not None:
            none = int(VariantStatus.NONE)
            await client.write_variant_flags(
                result.image_id, flags.get("medium", none), flags.get("large", none), r2_location
            )
        iqdb = outputs.get("iqdb")
        if (
            iqdb is not None
            and iqdb.path is not None
            and (reindex == "always" or (reindex == "changed" and iqdb.changed))
        ):
            await client.index_iqdb(result.image_id, iqdb.path)
    except EnqueueError as exc:
        raise TransientError(f"rendered, but follow-up jobs could not be queued: {exc}") from exc


def r2_location(settings: Settings, public: bool) -> int | None:
    """``images.r2_location`` for outputs written to the board's buckets; None without them."""
    if bucket_pair(settings) is None:
        return None
    return int(R2Location.PUBLIC if public else R2Location.PRIVATE)


@handles(RENDER_UPLOAD)
async def render_upload(ctx: ImgContext, payload: RenderUpload) -> dict[str, Any]:
    settings = ctx["settings"]
    public = payload.status is None or payload.status in PUBLIC_STATUSES
    request = RenderRequest(payload.image_id, payload.filename, payload.ext, public)
    [result] = await ctx["backend"].render_batch([request])
    if result.outputs:  # the thumbnail exists, even when a medium or large failed
        last_try = result.permanent or job_try(ctx) >= settings.max_tries
        location = r2_location(settings, public) if result.ok else None
        await queue_follow_ups(ctx["fleet"], result, last_try=last_try, r2_location=location)
    await raise_for_failure(ctx, result)
    return dataclasses.asdict(result)


async def refuse_other_settings(
    run: BulkRun, payload: RenderBatch, settings: Settings, unfinished: list[int]
) -> None:
    """A batch fed for other render settings is refused for good, its images counted failed
    and the reason kept in the run: skipping them as "current" would report a run that
    changed nothing as finished."""
    ours = settings.render.fingerprint()
    if not payload.fingerprint or payload.fingerprint == ours:
        return
    reason = (
        f"this worker renders with settings {ours}, the run was fed for {payload.fingerprint}: "
        "restart the img workers with the feeder's settings, then `fleet rethumb --force`"
    )
    await run.note("refused", reason)
    for image_id in unfinished:
        await run.record(image_id, "failed")
    raise PermanentError(reason, error_type="RenderSettingsMismatch")


@handles(RENDER_BATCH)
async def render_batch(ctx: ImgContext, payload: RenderBatch) -> dict[str, int]:
    """Re-render a batch of a bulk run, below every upload in the pool's order.

    Each image's outcome is recorded once in the run (a batch that runs again after a worker
    crash skips what it finished); failures are per image: a permanent one is dead-lettered
    alone, transient ones go back as a smaller batch with backoff."""
    settings = ctx["settings"]
    public = payload.public if payload.public is not None else [True] * len(payload.image_ids)
    items = list(zip(payload.image_ids, payload.filenames, payload.exts, public, strict=False))
    if not len(payload.image_ids) == len(payload.filenames) == len(payload.exts) == len(public):
        raise InvalidPayloadError("image_ids, filenames, exts and public differ in length")
    run = BulkRun(ctx["redis"], settings.namespace, payload.run_id)
    unfinished = await run.unfinished([item[0] for item in items])
    await refuse_other_settings(run, payload, settings, sorted(unfinished))
    todo = [item for item in items if item[0] in unfinished]
    options = render_options(settings, payload.variants, payload.mode, ctx.get("settings_since"))
    requests = [RenderRequest(*item) for item in todo]
    skipped, options = await skip_current(ctx, requests, options)
    rendered = iter(
        await ctx["backend"].render_batch(
            [r for r, skip in zip(requests, skipped, strict=True) if skip is None],
            options=options,
            priority=Priority.BULK,
        )
    )
    results = [skip or next(rendered) for skip in skipped]
    counts = dict.fromkeys(("rendered", "skipped", "failed", "retried"), 0)
    again: list[Item] = []
    for item, result in zip(todo, results, strict=True):
        outcome = await settle(ctx, payload, item, result)
        if outcome is None:
            again.append(item)
            counts["retried"] += 1
        elif await run.record(item[0], outcome):
            counts[outcome] += 1
    if again:
        await render_again(ctx, payload, again)
    return counts


Item = tuple[int, str, str, bool]
"""A batch's image: (id or listing position, filename, ext, in the public bucket)."""


async def skip_current(
    ctx: ImgContext, requests: list[RenderRequest], options: RenderOptions
) -> tuple[list[RenderResult | None], RenderOptions]:
    """The batch's skip check, done once for the batch from listings (see ``current``): the
    skipped results (None: render it), and the options to render the rest with. If the listing
    fails, each render looks for itself and reports its own error."""
    try:
        found = await asyncio.to_thread(current, ctx["storage"], requests, options)
    except (RenderError, UnsafePathError):
        return [None] * len(requests), options
    return found, dataclasses.replace(options, skip_current_since=None, skip_existing=False)


def gives_up(payload: RenderBatch, result: RenderResult, max_tries: int) -> bool:
    """Whether an image's failure is its last: permanent, its process lost a second time, or
    out of tries."""
    return (
        result.permanent
        or (isinstance(result, RenderLost) and payload.attempt >= 2)
        or (payload.attempt >= max_tries)
    )


async def settle(ctx: Context, payload: RenderBatch, item: Item, result: RenderResult) -> str | None:
    """One image of a batch: the follow-ups of what it produced queued, then its outcome
    (rendered, skipped, or failed once dead-lettered alone); None when it is to be rendered
    again."""
    settings = ctx["settings"]
    image_id, filename, ext, public = item
    last_try = gives_up(payload, result, settings.max_tries)
    # A failed medium leaves the thumbnail; a skip reports what is on disk, so its flags settle too.
    if result.outputs and payload.with_db:
        location = r2_location(settings, public) if result.ok and not result.skipped else None
        await queue_follow_ups(ctx["fleet"], result, payload.reindex, last_try=last_try, r2_location=location)
    if result.ok:
        return "skipped" if result.skipped else "rendered"
    if not last_try:
        return None
    one = dataclasses.replace(
        payload,
        image_ids=[image_id],
        filenames=[filename],
        exts=[ext],
        public=None if payload.public is None else [public],
        attempt=1,
    )
    await dead_letter(
        ctx,
        RENDER_BATCH.name,
        [RENDER_BATCH.encode(one)],
        result.error_type or "RenderError",
        f"{result.file}: {result.error}",
        letter_id=f"{ctx['job_id']}-{image_id}",
    )
    return "failed"


async def render_again(ctx: Context, payload: RenderBatch, again: list[Item]) -> None:
    """Queue the images that failed transiently as one smaller batch, after a backoff."""
    settings = ctx["settings"]
    retry = dataclasses.replace(
        payload,
        image_ids=[item[0] for item in again],
        filenames=[item[1] for item in again],
        exts=[item[2] for item in again],
        public=None if payload.public is None else [item[3] for item in again],
        attempt=payload.attempt + 1,
        # Render them whatever is on disk: a medium that failed alone has no file, which
        # the skip check would read as "not needed" next to a current thumbnail.
        mode="all",
    )
    try:
        await ctx["fleet"].enqueue(RENDER_BATCH, retry, defer_s=backoff_s(payload.attempt, settings))
    except EnqueueError as exc:
        raise TransientError(f"could not queue the retry of {len(again)} images: {exc}") from exc
