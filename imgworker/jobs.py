"""Job functions of the img queue: thin adapters from a payload to the render backend."""

from __future__ import annotations

import dataclasses
from typing import Any

from fleet.client import FleetClient
from fleet.errors import EnqueueError, PermanentError, TransientError
from fleet.registry import RENDER_UPLOAD, RenderUpload
from fleet.settings import Settings
from fleet.worker import Context, handles
from imgworker.backend import LOST, RenderBackend
from imgworker.render import RenderRequest, RenderResult, VariantStatus


async def raise_for_failure(ctx: Context, result: RenderResult) -> None:
    """A failed render becomes a job failure: permanent for bad input, transient otherwise.

    A render whose process crashed or was killed at its timeout is retried once; if the same
    original loses its process again, the input is to blame and the job is dead-lettered."""
    if result.ok:
        return
    message = f"{result.file}: {result.error}"
    if result.error_type in LOST:
        settings: Settings = ctx["settings"]
        key = f"{settings.namespace}:render-lost:{result.file}"
        async with ctx["redis"].pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, 86400)
            losses, _ = await pipe.execute()
        if losses >= 2:
            raise PermanentError(f"{message} (the second time for this original)", kind=result.error_type)
    error = PermanentError if result.permanent else TransientError
    raise error(message, kind=result.error_type)


async def queue_follow_ups(client: FleetClient, result: RenderResult) -> None:
    """Flags and IQDB right after the render, no fixed delay: the thumbnail exists now.

    If queueing fails the render job is retried (rendering again is harmless); the upload is
    never left with files on disk but no flags."""
    outputs = result.outputs
    none = VariantStatus.NONE
    try:
        await client.write_variant_flags(
            result.image_id,
            medium=int(outputs["medium"].status if "medium" in outputs else none),
            large=int(outputs["large"].status if "large" in outputs else none),
        )
        iqdb = outputs.get("iqdb")
        if iqdb is not None and iqdb.path is not None:
            await client.index_iqdb(result.image_id, iqdb.path)
    except EnqueueError as exc:
        raise TransientError(f"rendered, but follow-up jobs could not be queued: {exc}") from exc


@handles(RENDER_UPLOAD)
async def render_upload(ctx: Context, payload: RenderUpload) -> dict[str, Any]:
    backend: RenderBackend = ctx["backend"]
    [result] = await backend.render_batch([RenderRequest(payload.image_id, payload.filename, payload.ext)])
    await raise_for_failure(ctx, result)
    await queue_follow_ups(ctx["fleet"], result)
    return dataclasses.asdict(result)
