"""Which originals the GPU takes: a cheap walk over a JPEG's marker segments (no decode, no
libvips), up to its first scan.

The GPU's JPEG engines decode baseline (SOF0), 8-bit, grey or YCbCr JPEGs. Everything else
goes to the CPU pool: progressive and other JPEG kinds, CMYK/YCCK or RGB-coded JPEGs, an ICC
profile (the GPU applies none, and the CPU path converts to sRGB), every other format, and
originals over the pixel caps.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_SOF_BASELINE = 0xC0
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_SOF_KIND = {0xC1: "extended", 0xC2: "progressive", 0xC3: "lossless"}
_SOS, _EOI, _APP2, _APP14 = 0xDA, 0xD9, 0xE2, 0xEE
_STANDALONE = {0x01, *range(0xD0, 0xD8)}


@dataclass(frozen=True, slots=True)
class Route:
    gpu: bool
    """True: decode and resize on the GPU; False: the CPU pool renders it (``reason`` says why)."""
    reason: str = ""
    width: int = 0
    height: int = 0
    bands: int = 0
    """1 (grey) or 3 (YCbCr, decoded to RGB) when ``gpu``."""


def cpu(reason: str) -> Route:
    return Route(False, reason)


def route(data: bytes, max_pixels: int) -> Route:
    """Where ``data`` (a whole original) renders; ``max_pixels`` is the smaller of the render
    cap and the GPU's (an original over the render cap is refused by the CPU path)."""
    if data[:2] != b"\xff\xd8":
        return cpu("not a JPEG")
    pos, has_icc, adobe_transform, frame = 2, False, None, None
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:  # stray bytes: libjpeg skips them with a warning, so do we
            pos += 1
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker in (_SOS, _EOI):
            break
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        body = data[pos + 4 : pos + 2 + length]
        if length < 2 or len(body) != length - 2:
            return cpu("truncated JPEG header")
        if marker == _APP2 and body.startswith(b"ICC_PROFILE\0"):
            has_icc = True
        elif marker == _APP14 and body.startswith(b"Adobe") and len(body) >= 12:
            adobe_transform = body[11]
        elif marker in _SOF:
            if frame is not None:
                return cpu("more than one frame header")
            frame = (marker, body)
        pos += 2 + length
    if frame is None:
        return cpu("no JPEG frame header before the first scan")
    marker, body = frame
    if marker != _SOF_BASELINE:
        return cpu(f"{_SOF_KIND.get(marker, 'arithmetic/hierarchical')} JPEG (the GPU decodes baseline)")
    if len(body) < 6:
        return cpu("truncated JPEG frame header")
    precision, height, width, bands = struct.unpack(">BHHB", body[:6])
    if precision != 8:
        return cpu(f"{precision}-bit JPEG")
    if bands not in (1, 3):
        return cpu(f"{bands}-component JPEG (CMYK/YCCK)")
    if bands == 3 and adobe_transform == 0:
        return cpu("RGB-coded JPEG (Adobe transform 0)")
    if has_icc:
        return cpu("ICC profile (converted to sRGB on the CPU)")
    if width == 0 or height == 0:
        return cpu("JPEG without its height in the frame header")
    if width * height > max_pixels:
        return cpu(f"{width}x{height} is over the GPU's pixel cap")
    return Route(True, width=width, height=height, bands=bands)
