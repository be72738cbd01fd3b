"""Job functions of the img queue: thin adapters from a payload to the render backend."""

from __future__ import annotations

import dataclasses
from typing import Any

from fleet.client import FleetClient
from fleet.errors import EnqueueError, PermanentError, TransientError
from fleet.registry import RENDER_UPLOAD, RenderUpload
from fleet.worker import Context, handles
from imgworker.backend import RenderBackend
from imgworker.render import RenderRequest, RenderResult, VariantStatus


def raise_for_failure(result: RenderResult) -> None:
    """A failed render becomes a job failure: permanent for bad input, transient otherwise."""
    if result.ok:
        return
    error = PermanentError if result.permanent else TransientError
    raise error(f"{result.file}: {result.error}", kind=result.error_type)


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
    raise_for_failure(result)
    await queue_follow_ups(ctx["fleet"], result)
    return dataclasses.asdict(result)
