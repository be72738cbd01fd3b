"""The render steps, each small and named: inspect, load, colour, alpha, resize, sharpen, flatten,
encode.

pyvips images are lazy: each step adds to a pipeline that runs when it is encoded (or copied to
memory for the cascade), so a step costs nothing until then.
"""

from __future__ import annotations

import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyvips

from imgworker.render.errors import (
    TooManyPixelsError,
    TooManyScansError,
    TooMuchMemoryError,
    UnsupportedImageError,
)

# libvips loader name prefix -> the format we call it. Anything else is refused. An Ultra HDR
# JPEG (uhdrload: an SDR JPEG plus a gain map) is a JPEG: we render its SDR base image.
_LOADERS = {
    "jpegload": "jpeg",
    "uhdrload": "jpeg",
    "pngload": "png",
    "gifload": "gif",
    "webpload": "webp",
    "heifload": "avif",
}

MAX_JPEG_SCANS = 100
"""Encoders write 1 (baseline) to about 10 scans (progressive); each is a pass over the image."""

# Peak memory of a whole-image decode per decoded byte (width x height x bands x bytes per
# sample), measured with fleet's render process: libheif holds YUV planes, its RGB conversion
# and libvips' copy (4-5x); libspng an interlaced PNG (1.2x); libjpeg a progressive JPEG's
# coefficients (1.2x); a GIF frame is one RGBA canvas.
_DECODE_OVERHEAD = {"avif": 4.0, "png": 1.2, "jpeg": 1.2, "gif": 1.0}

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


def open_header(source: Path | bytes, **options: Any) -> pyvips.Image:
    """An image opened from a file, or from the bytes of an object read whole (a bucket's)."""
    if isinstance(source, bytes):
        return pyvips.Image.new_from_buffer(source, "", **options)
    return pyvips.Image.new_from_file(str(source), **options)


def inspect(path: Path | bytes, max_pixels: int, decode_budget_mb: int = 0) -> Header:
    """Header-only open (no pixel decode): size, real format, colour profile.

    The caps are applied here, so a tiny file claiming 65000x65000 is refused in about a
    millisecond instead of being decoded: the pixel cap, the decoded-bytes budget of formats
    decoded whole (0: none), the scan count of a progressive JPEG and an APNG's first frame."""
    try:
        header = open_header(path)
    except pyvips.Error as exc:
        raise UnsupportedImageError(f"not a readable image: {_vips_message(exc)}") from exc
    loader = str(header.get("vips-loader"))
    fmt = next((name for prefix, name in _LOADERS.items() if loader.startswith(prefix)), None)
    if fmt is None:
        raise UnsupportedImageError(f"unsupported format ({loader})")
    width, height = header.width, header.height
    if width * height > max_pixels:
        raise TooManyPixelsError(f"{width}x{height} is more than MAX_PIXELS={max_pixels}")
    if decode_budget_mb:
        check_decode_budget(header, fmt, decode_budget_mb)
    if fmt == "jpeg" and _flag(header, "jpeg-multiscan"):
        check_scans(path)
    if fmt == "png":
        check_apng(path)
    return Header(width, height, fmt, header.get_typeof("icc-profile-data") != 0)


def _flag(header: pyvips.Image, name: str) -> bool:
    return header.get_typeof(name) != 0 and bool(header.get(name))


def _decoded_whole(header: pyvips.Image, fmt: str) -> str | None:
    """How ``header``'s decoder holds the whole image at once (None: it streams or shrinks)."""
    if fmt == "avif":
        return "AVIF/HEIF"
    if fmt == "gif":
        return "GIF"
    if fmt == "png" and _flag(header, "interlaced"):
        return "interlaced PNG"
    if fmt == "jpeg" and _flag(header, "jpeg-multiscan"):
        return "progressive JPEG"
    return None


def check_decode_budget(header: pyvips.Image, fmt: str, budget_mb: int) -> None:
    """Refuse, from the header, an image whose whole-image decode needs more than the budget."""
    kind = _decoded_whole(header, fmt)
    if kind is None:
        return
    sample_bytes = 2 if header.format in ("ushort", "short") else 1
    bands = 4 if fmt == "gif" else header.bands
    needed = header.width * header.height * bands * sample_bytes * _DECODE_OVERHEAD[fmt]
    if needed > budget_mb * 2**20:
        bits = header.get("bits-per-sample") if header.get_typeof("bits-per-sample") else 8 * sample_bytes
        raise TooMuchMemoryError(
            f"{header.width}x{header.height} {bits}-bit {kind} needs ~{_size(needed)} decoded, "
            f"over RENDER_DECODE_BUDGET_MB={budget_mb}"
        )


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


# After a scan's entropy-coded data, the next marker: 0xFF not followed by a stuffed 0x00, a
# restart marker (RST0-7) or a fill byte.
_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_SOS, _EOI = 0xDA, 0xD9


def count_scans(data: bytes | mmap.mmap, stop_after: int) -> int:
    """SOS markers of a JPEG, walking its segments (an EXIF thumbnail's are skipped with its
    APP1); stops counting past ``stop_after``. A regex scan over the file: milliseconds."""
    pos, scans = 2, 0
    while scans <= stop_after:
        found = _MARKER.search(data, pos)
        if found is None or found.start() + 4 > len(data):
            break
        marker = data[found.start() + 1]
        if marker == _EOI:
            break
        (length,) = struct.unpack_from(">H", data, found.start() + 2)
        scans += marker == _SOS
        pos = found.start() + 2 + length  # a scan's data follows its header
    return scans


def check_scans(path: Path | bytes) -> None:
    if isinstance(path, bytes):
        scans = count_scans(path, MAX_JPEG_SCANS)
    else:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            scans = count_scans(data, MAX_JPEG_SCANS)
    if scans > MAX_JPEG_SCANS:
        raise TooManyScansError(f"progressive JPEG with more than {MAX_JPEG_SCANS} scans")


def check_apng(path: Path | bytes) -> None:
    """Refuse an APNG whose default image (IDAT, what libvips decodes) is not its first frame:
    browsers show the first fcTL frame, so its thumbnail would show another picture."""
    if isinstance(path, bytes):
        data = path[: 1 << 16]
    else:
        with open(path, "rb") as fh:
            data = fh.read(1 << 16)
    pos, animated = 8, False
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"acTL":
            animated = True
        elif kind == b"fcTL":
            return  # the default image is the first frame
        elif kind == b"IDAT":
            if animated:
                raise UnsupportedImageError("APNG whose default image is not its first frame")
            return
        pos += 12 + length


def load(
    path: Path | bytes, fmt: str, width: int, height: int, fail_on: str, has_profile: bool
) -> pyvips.Image:
    """Decode already shrunk to fit ``width`` x ``height`` (shrink-on-load), oriented, first
    frame only.

    ``thumbnail`` fuses load, EXIF orientation and the resize on purpose: a JPEG is decoded at
    1/2, 1/4 or 1/8 scale and WebP through libwebp's scaled decode, so a 6000 px original
    never exists in memory at full size. CMYK comes out as sRGB on its own; an embedded
    profile is kept as is unless we ask for sRGB, and stripping it later would shift the
    colours, so we ask (only then: a transform costs a pass over every pixel)."""
    options: dict[str, Any] = {"output_profile": "srgb"} if has_profile else {}
    if fmt == "avif":
        # thumbnail() would decode the file's embedded thumbnail item when it is big enough:
        # the uploader's, which may be another picture. Always the primary image.
        primary = open_header(path, access="sequential", fail_on=fail_on, thumbnail=False)
        return primary.thumbnail_image(width, height=height, size="down", **options)
    if isinstance(path, bytes):
        return pyvips.Image.thumbnail_buffer(
            path, width, height=height, size="down", option_string=f"fail_on={fail_on}", **options
        )
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


def encode(image: pyvips.Image, fmt: str, quality: int, effort: int = 4) -> bytes:
    """Encode with all metadata stripped (EXIF, XMP, ICC: pixels are already sRGB).

    ``effort`` is WebP's (0-6): 4, libvips' default, took 12.6 ms for a 500 px thumbnail here
    and 2 took 5.7 ms for 6 % more bytes (``fleet bench`` prints the table)."""
    options: dict[str, Any] = {"keep": "none"}
    if fmt == "jpeg":
        data = image.jpegsave_buffer(Q=quality, **options)
    elif fmt == "webp":
        data = image.webpsave_buffer(Q=quality, effort=effort, **options)
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


_OUT_OF_MEMORY = re.compile(r"out of memory|insufficient memory|memory allocation|cannot allocate", re.I)


def out_of_memory(exc: pyvips.Error) -> bool:
    """Whether a libvips error is an allocation that failed (under the render's memory limit):
    libvips, libjpeg and libheif each word it differently, and not always on the first line."""
    return bool(_OUT_OF_MEMORY.search(f"{exc.message}\n{getattr(exc, 'detail', '')}"))


def _vips_message(exc: pyvips.Error) -> str:
    detail = (getattr(exc, "detail", "") or str(exc)).strip().splitlines()
    return detail[0] if detail else "libvips error"
