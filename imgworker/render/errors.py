"""Why a render failed. Pure image code raises these; the job layer decides retry or not."""

from __future__ import annotations


class RenderError(Exception):
    """A render that cannot succeed on this input: retrying will not help."""

    permanent = True


class MissingOriginalError(RenderError):
    pass


class UnsupportedImageError(RenderError):
    """Not an image, a format we do not render, or undecodable/truncated data."""


class TooManyPixelsError(RenderError):
    """More pixels than MAX_PIXELS: refused from the header, before any decode."""


class StorageError(RenderError):
    """Writing an output failed (disk full, permissions): may pass, so it is retried."""

    permanent = False


class TooMuchMemoryError(RenderError):
    """Decoding needs more memory than a render may use: refused from the header (the decoded
    bytes are over RENDER_DECODE_BUDGET_MB), or an allocation failed under RENDER_MEMORY_MB."""


class TooManyScansError(RenderError):
    """A progressive JPEG with more scans than any encoder makes: each scan is a pass over the
    whole image, so hundreds of them cost tens of CPU-seconds."""


class BucketRefusedError(StorageError):
    """The bucket refused us (wrong credentials, no such bucket, no access): retrying the same
    request cannot help until an operator fixes the settings."""

    permanent = True
