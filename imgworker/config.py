"""The render options of the fleet's settings (the render package itself never reads them)."""

from __future__ import annotations

from fleet.settings import Settings
from imgworker.render import RenderOptions, default_options


def render_options(settings: Settings) -> RenderOptions:
    return default_options(
        thumb_size=settings.thumb_size,
        thumb_format=settings.thumb_format,
        thumb_quality=settings.thumb_quality,
        thumb_sharpen=settings.thumb_sharpen,
        medium_edge=settings.medium_edge,
        large_edge=settings.large_edge,
        variant_quality=settings.variant_quality,
        max_pixels=settings.max_pixels,
        iqdb=settings.iqdb_url is not None,
    )
