"""Job functions of the img queue: thin adapters from a payload to the render backend."""

from __future__ import annotations

import dataclasses
from typing import Any

from fleet.errors import PermanentError, TransientError
from fleet.registry import RENDER_UPLOAD, RenderUpload
from fleet.worker import Context, handles
from imgworker.backend import RenderBackend
from imgworker.render import RenderRequest, RenderResult


def raise_for_failure(result: RenderResult) -> None:
    """A failed render becomes a job failure: permanent for bad input, transient otherwise."""
    if result.ok:
        return
    error = PermanentError if result.permanent else TransientError
    raise error(f"{result.file}: {result.error}", kind=result.error_type)


@handles(RENDER_UPLOAD)
async def render_upload(ctx: Context, payload: RenderUpload) -> dict[str, Any]:
    backend: RenderBackend = ctx["backend"]
    [result] = await backend.render_batch([RenderRequest(payload.image_id, payload.filename, payload.ext)])
    raise_for_failure(result)
    return dataclasses.asdict(result)
