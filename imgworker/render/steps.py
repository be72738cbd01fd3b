"""The render steps, each small and named: inspect, load, colour, alpha, resize, sharpen, flatten,
encode.

pyvips images are lazy: each step adds to a pipeline that runs when it is encoded (or copied to
memory for the cascade), so a step costs nothing until then.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyvips

from imgworker.render.errors import TooManyPixelsError, UnsupportedImageError

# libvips loader name prefix -> the format we call it. Anything else is refused.
_LOADERS = {"jpegload": "jpeg", "pngload": "png", "gifload": "gif", "webpload": "webp", "heifload": "avif"}

# "Mild" sharpening after a downscale, as vipsthumbnail used to apply it.
_SHARPEN_MASK = pyvips.Image.new_from_list([[-1, -1, -1], [-1, 32, -1], [-1, -1, -1]], scale=24)


@dataclass(frozen=True, slots=True)
class Header:
    width: int
    height: int
    format: str
    """The real format of the content, whatever the extension says."""
    has_profile: bool
    """An embedded ICC profile (Display P3, Adobe RGB, ...) that must be converted to sRGB."""


def inspect(path: Path, max_pixels: int) -> Header:
    """Header-only open (no pixel decode): size, real format, colour profile.

    The pixel cap is applied here, so a tiny file claiming 65000x65000 is refused in about a
    millisecond instead of being decoded."""
    try:
        header = pyvips.Image.new_from_file(str(path))
    except pyvips.Error as exc:
        raise UnsupportedImageError(f"not a readable image: {_vips_message(exc)}") from exc
    loader = str(header.get("vips-loader"))
    fmt = next((name for prefix, name in _LOADERS.items() if loader.startswith(prefix)), None)
    if fmt is None:
        raise UnsupportedImageError(f"unsupported format ({loader})")
    width, height = header.width, header.height
    if width * height > max_pixels:
        raise TooManyPixelsError(f"{width}x{height} is more than MAX_PIXELS={max_pixels}")
    return Header(width, height, fmt, header.get_typeof("icc-profile-data") != 0)


def load(path: Path, width: int, height: int, fail_on: str, has_profile: bool) -> pyvips.Image:
    """Decode already shrunk to fit ``width`` x ``height`` (shrink-on-load), oriented, first
    frame only.

    ``thumbnail`` fuses load, EXIF orientation and the resize on purpose: a JPEG is decoded at
    1/2, 1/4 or 1/8 scale and WebP through libwebp's scaled decode, so a 6000 px original
    never exists in memory at full size. CMYK comes out as sRGB on its own; an embedded
    profile is kept as is unless we ask for sRGB, and stripping it later would shift the
    colours, so we ask (only then: a transform costs a pass over every pixel)."""
    options: dict[str, Any] = {"output_profile": "srgb"} if has_profile else {}
    return pyvips.Image.thumbnail(str(path), width, height=height, size="down", fail_on=fail_on, **options)


def to_srgb(image: pyvips.Image) -> pyvips.Image:
    """8-bit sRGB (or 8-bit grey), whatever the input: 16-bit PNG, CMYK, Lab, ..."""
    grey = image.interpretation in ("b-w", "grey16")
    target = "b-w" if grey else "srgb"
    if image.interpretation != target:
        image = image.colourspace(target)
    if image.format != "uchar":
        image = image.cast("uchar")
    return image


def drop_opaque_alpha(image: pyvips.Image) -> pyvips.Image:
    """Art tools often export RGBA with nothing transparent. Such an alpha band changes no
    pixel, yet it costs: measured here at 2048 px, a PNG variant 12 % bigger and 16 % slower,
    a 500 px WebP thumbnail 25 ms instead of 16. Expects decoded, 8-bit pixels."""
    if image.hasalpha() and image[image.bands - 1].min() == 255:
        return image[: image.bands - 1]
    return image


def resize(image: pyvips.Image, width: int, height: int) -> pyvips.Image:
    """Fit ``width`` x ``height`` from an image already in memory (one step of the cascade)."""
    if image.width <= width and image.height <= height:
        return image
    return image.thumbnail_image(width, height=height, size="down")


def sharpen(image: pyvips.Image) -> pyvips.Image:
    """Light sharpening of the colour bands; alpha is left alone so edges do not ring."""
    if image.hasalpha():
        colour, alpha = image[: image.bands - 1], image[image.bands - 1]
        return colour.conv(_SHARPEN_MASK, precision="integer").bandjoin(alpha)
    return image.conv(_SHARPEN_MASK, precision="integer")


def flatten(image: pyvips.Image, fmt: str) -> pyvips.Image:
    """JPEG has no alpha: composite onto white rather than letting transparency turn black."""
    if fmt == "jpeg" and image.hasalpha():
        background = [255] * (image.bands - 1)
        return image.flatten(background=background)
    return image


def encode(image: pyvips.Image, fmt: str, quality: int) -> bytes:
    """Encode with all metadata stripped (EXIF, XMP, ICC: pixels are already sRGB)."""
    options: dict[str, Any] = {"keep": "none"}
    if fmt == "jpeg":
        data = image.jpegsave_buffer(Q=quality, **options)
    elif fmt == "webp":
        data = image.webpsave_buffer(Q=quality, **options)
    elif fmt == "png":
        # Adaptive row filters at zlib level 3: 7-26 % slower than libvips' default (no
        # filters, level 6) and 1.8-2.6x smaller. Unfiltered, a 2048 px variant came out
        # bigger than a PNG saved by an ordinary art tool, so it was dropped as no smaller.
        data = image.pngsave_buffer(compression=3, filter="all", **options)
    elif fmt == "gif":
        # Quantising is most of a GIF's cost: effort 1 with the original's palette reused is
        # 5x faster than the defaults (2.3 s -> 0.4 s for 1280 px here), barely larger.
        data = image.gifsave_buffer(effort=1, reuse=True, **options)
    elif fmt == "avif":
        data = image.heifsave_buffer(Q=quality, compression="av1", **options)
    else:
        raise UnsupportedImageError(f"no encoder for {fmt!r}")
    return bytes(data)


def _vips_message(exc: pyvips.Error) -> str:
    detail = (getattr(exc, "detail", "") or str(exc)).strip().splitlines()
    return detail[0] if detail else "libvips error"
