"""The render settings: what every output's pixels and bytes depend on, in one frozen object.

:class:`fleet.settings.Settings` takes its defaults from here and builds the object once
(``Settings.render``); the pure render code (``imgworker/render``, which may import this
plain module but nothing of arq) derives its variants from it; bulk runs key their outputs'
currency on its :meth:`RenderSettings.fingerprint`, which hashes every field. A knob left
out of the fingerprint would make ``fleet rethumb`` treat stale outputs as current, silently:
a knob that changes what an output looks like belongs here, and nowhere else.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from typing import Any

FORMAT_OF_EXT = {"webp": "webp", "jpeg": "jpeg", "jpg": "jpeg", "png": "png", "gif": "gif", "avif": "avif"}
"""The formats we write, by extension (``jpg`` is ``jpeg``)."""

MAX_PIXELS = 100_000_000
"""Default MAX_PIXELS. A limit, not a look: it refuses originals (which then have no outputs,
so a later run renders them anyway) and changes no output's bytes, so it is no render setting."""
DECODE_BUDGET_MB = 512
"""Default RENDER_DECODE_BUDGET_MB; a limit, like MAX_PIXELS."""


@dataclass(frozen=True, slots=True)
class RenderSettings:
    """The board's variants (its MAX_THUMB_WIDTH/HEIGHT, THUMBNAIL_QUALITY, MEDIUM_EDGE,
    LARGE_EDGE, LARGE_QUALITY defaults) and whether fleet's IQDB JPEG is made."""

    thumb_width: int = 500
    thumb_height: int = 500
    thumb_format: str = "webp"
    thumb_quality: int = 75
    thumb_sharpen: bool = True
    thumb_effort: int = 4
    """WebP encode effort of the thumbnail (0-6)."""
    medium_edge: int = 1280
    large_edge: int = 2048
    variant_quality: int = 90
    iqdb: bool = False
    """Set when IQDB_URL is: the thumbnail's pixels are also written as ``iqdb/{filename}.jpg``."""

    def fingerprint(self) -> str:
        """A short hash of every field, in field order (the same tuple of values bulk runs
        hashed before this object existed, so their keys stay as they were). A field added
        later joins the hash only when it differs from what outputs were made with before it
        existed (``_ADDED``): adding a knob does not make the whole archive stale."""
        values = tuple(
            getattr(self, f.name)
            for f in fields(self)
            if f.name not in _ADDED or getattr(self, f.name) != _ADDED[f.name]
        )
        return hashlib.sha1(repr(values).encode()).hexdigest()[:12]

    def by_name(self) -> dict[str, Any]:
        """Every field by the setting it comes from: what img workers beat, so a feeder can
        name the settings in which they differ from its own."""
        return {_SETTING.get(f.name, f.name.upper()): getattr(self, f.name) for f in fields(self)}


_ADDED: dict[str, Any] = {"thumb_effort": 4}
"""Fields added after bulk runs first keyed on the fingerprint, by the value every output had
before the field existed (libvips' default WebP effort)."""

_SETTING = {"iqdb": "IQDB_URL set"}
"""Fields named otherwise than their upper-cased name."""


def settings_differ(ours: dict[str, Any], theirs: dict[str, Any]) -> str:
    """The settings two :meth:`RenderSettings.by_name` differ in, as ``NAME=here (there)`` pairs."""
    return ", ".join(
        f"{name}={ours[name]} here ({theirs.get(name)} there)"
        for name in ours
        if theirs.get(name) != ours[name]
    )
