"""The render options of the fleet's settings (the render package itself never reads them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from fleet.objects import bucket_config, bucket_pair
from fleet.settings import Settings
from imgworker.render import RenderOptions, options_of
from imgworker.render.storage import ObjectStore, StatusBuckets


def render_options(
    settings: Settings, variants: Sequence[str] = (), mode: str = "stale", since: float | None = None
) -> RenderOptions:
    """The render options for ``settings``; a bulk run may ask for only some ``variants``
    (the IQDB JPEG comes with the thumbnail), and to skip current outputs (``mode``)."""
    options = options_of(
        settings.render, max_pixels=settings.max_pixels, decode_budget_mb=settings.render_decode_budget_mb
    )
    if variants:
        wanted = set(variants) | ({"iqdb"} if "thumb" in variants else set())
        options = replace(options, variants=tuple(v for v in options.variants if v.name in wanted))
    if mode == "stale":
        options = replace(options, skip_current_since=since)
    elif mode == "missing":
        options = replace(options, skip_existing=True)
    return options


def render_storage(settings: Settings) -> Path | ObjectStore | StatusBuckets:
    """Where renders read originals and write outputs: the folder STORAGE_PATH, the bucket of
    STORAGE_URL (``s3://BUCKET``), or the board's two buckets (``r2://``), at R2_ENDPOINT with
    the R2 credentials."""
    config, pair = bucket_config(settings), bucket_pair(settings)
    if pair is not None:
        return StatusBuckets(pair)
    return settings.storage_path if config is None else ObjectStore(config)
