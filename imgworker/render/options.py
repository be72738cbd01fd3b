"""What to render: variant sizes, formats, qualities. Plain data, picklable into pool processes.

The variants are derived from :class:`~fleet.render_settings.RenderSettings` (one home for the
render settings and their defaults); the board's codes and folders are :mod:`fleet.board`'s."""

from __future__ import annotations

from dataclasses import dataclass, field

from fleet.board import Folder, VariantStatus
from fleet.render_settings import DECODE_BUDGET_MB, FORMAT_OF_EXT, MAX_PIXELS, RenderSettings


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    """thumb, medium or large; also the folder it is written to (thumb goes to thumbs/)."""
    folder: str
    width: int
    height: int
    """The output fits in width x height (the board's thumbnail box, or a square edge x edge for
    medium and large); never upscaled."""
    quality: int
    format: str | None = None
    """An output format (webp, jpeg, png, gif, avif), or None for the original's own format."""
    sharpen: bool = False
    effort: int = 4
    """WebP encode effort (0-6; libvips' default 4): only a WebP output reads it."""
    always: bool = False
    """Made for every original; otherwise only for originals larger than its box whose
    rendition is smaller in bytes than the original."""

    def fits(self, width: int, height: int) -> bool:
        """Whether a ``width`` x ``height`` image already fits the box (it is not resized)."""
        return width <= self.width and height <= self.height

    def within(self, other: Variant) -> bool:
        """Whether this box fits inside ``other``'s, so it can be resized from that variant."""
        return other.fits(self.width, self.height)

    def ext(self, original_ext: str) -> str:
        """The extension it is written with: the original's own, or its format's."""
        if self.format is None:
            return original_ext
        return "jpg" if self.format == "jpeg" else self.format

    def output_format(self, original_ext: str) -> str | None:
        """The format it is encoded in: its own, or the original's (None: not one we write)."""
        return self.format or FORMAT_OF_EXT.get(original_ext.lower())


@dataclass(frozen=True, slots=True)
class RenderOptions:
    variants: tuple[Variant, ...]
    max_pixels: int = MAX_PIXELS
    decode_budget_mb: int = DECODE_BUDGET_MB
    """Formats decoded whole (AVIF, interlaced PNG, progressive JPEG, GIF) are refused from the
    header when their decoded bytes are over this (0: no budget)."""
    fail_on: str = "truncated"
    """libvips' fail_on for loads: a truncated file is an error, not a grey-filled image."""
    skip_current_since: float | None = None
    """Skip an original whose wanted outputs all exist, newer than both the original and this
    time (when the current settings took effect): re-running a bulk pass is cheap."""
    skip_existing: bool = False
    """Skip an original whose wanted outputs all exist, however old (repairing losses)."""

    def __post_init__(self) -> None:
        # Largest box first: the cascade resizes each variant from the one before it.
        object.__setattr__(self, "variants", tuple(sorted(self.variants, key=lambda v: -v.width * v.height)))


def variants_of(settings: RenderSettings) -> tuple[Variant, ...]:
    """The board's variants; with ``settings.iqdb``, also ``iqdb/{filename}.jpg``, the thumbnail's
    pixels as JPEG, because danbooru/iqdb decodes JPEG only (and the light workers carry no libvips)."""
    large, medium, quality = settings.large_edge, settings.medium_edge, settings.variant_quality
    box = (settings.thumb_width, settings.thumb_height)
    variants = [
        Variant("large", Folder.LARGE, large, large, quality),
        Variant("medium", Folder.MEDIUM, medium, medium, quality),
        Variant(
            "thumb",
            Folder.THUMBS,
            *box,
            settings.thumb_quality,
            settings.thumb_format,
            settings.thumb_sharpen,
            effort=settings.thumb_effort,
            always=True,
        ),
    ]
    if settings.iqdb:
        variants.append(Variant("iqdb", Folder.IQDB, *box, 90, "jpeg", always=True))
    return tuple(variants)


def options_of(
    settings: RenderSettings, *, max_pixels: int = MAX_PIXELS, decode_budget_mb: int = DECODE_BUDGET_MB
) -> RenderOptions:
    """Render options for ``settings`` within these limits (a bulk run narrows them further)."""
    return RenderOptions(variants_of(settings), max_pixels=max_pixels, decode_budget_mb=decode_budget_mb)


@dataclass(frozen=True, slots=True)
class RenderRequest:
    """One stored original: ``fullsize/{filename}.{ext}`` under the storage root."""

    image_id: int
    filename: str
    ext: str
    public: bool = True
    """With the board's two buckets, which one holds the image (its status chooses)."""

    @property
    def file(self) -> str:
        """The original, relative to the storage root (as results and errors name it)."""
        return f"{Folder.ORIGINALS}/{self.filename}.{self.ext}"


@dataclass(frozen=True, slots=True)
class Output:
    variant: str
    status: VariantStatus
    path: str | None = None
    """Relative to the storage root; None when the variant is NONE."""
    width: int = 0
    height: int = 0
    bytes: int = 0
    changed: bool = True
    """False when the file already held exactly these bytes (not rewritten). Found out for the
    IQDB JPEG and in a folder; other outputs in a bucket report True (a HEAD each to know)."""
    error: str | None = None
    """Why this medium or large could not be made (the thumbnail does not depend on it); its
    status is then NONE when retrying cannot help (the board serves the original) and PENDING
    when it may (a retry can still make it)."""
    error_type: str | None = None
    permanent: bool = True
    """Only meaningful when ``error`` is set: whether retrying cannot help."""

    @property
    def failed(self) -> bool:
        return self.error is not None


@dataclass(slots=True)
class RenderResult:
    image_id: int
    file: str
    ok: bool
    outputs: dict[str, Output] = field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None
    permanent: bool = True
    seconds: float = 0.0
    skipped: bool = False
    """Its outputs were already current: nothing was decoded or written."""

    @property
    def failed_variants(self) -> list[str]:
        """Variants that failed alone (``ok`` is False, yet the thumbnail and the rest exist)."""
        return [name for name, out in self.outputs.items() if out.failed]
