"""A corpus of hostile and odd originals, generated at test time, each with its defined outcome."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyvips

from tests.images import pattern


@dataclass(frozen=True)
class Case:
    name: str
    """Stored name ``{filename}.{ext}`` under fullsize/."""
    outcome: str
    """"ok", or the error type of the permanent failure."""
    check: Callable[[Path, dict[str, Any]], None] | None = None
    """Extra checks on a successful render: (storage root, outputs by variant)."""

    @property
    def filename(self) -> str:
        return self.name.rsplit(".", 1)[0]

    @property
    def ext(self) -> str:
        return self.name.rsplit(".", 1)[1]


def decoded(storage: Path, out: Any) -> pyvips.Image:
    path = out["path"] if isinstance(out, dict) else out.path
    image = pyvips.Image.new_from_file(str(storage / path), fail_on="error")
    image.avg()
    return image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_bomb(width: int = 60000, height: int = 60000) -> bytes:
    """A ~100-byte PNG whose header claims width x height (grey, 8 bit)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 2, 9)  # two rows; a decoder would want them all
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", rows)
        + _png_chunk(b"IEND", b"")
    )


def jpeg_bomb(width: int = 65000, height: int = 65000) -> bytes:
    """A small JPEG whose SOF0 header is patched to claim width x height."""
    data = bytearray(pattern(16, 16).jpegsave_buffer(Q=50, optimize_coding=False))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def quadrant(image: pyvips.Image) -> str:
    """Which corner holds the bright quadrant."""
    w, h = image.width // 2, image.height // 2
    corners = {
        "top-left": image.crop(0, 0, w, h),
        "top-right": image.crop(w, 0, image.width - w, h),
        "bottom-left": image.crop(0, h, w, image.height - h),
        "bottom-right": image.crop(w, h, image.width - w, image.height - h),
    }
    return max(corners, key=lambda k: corners[k].avg())


# Where the stored top-left corner is displayed, per EXIF orientation.
ORIENTED_CORNER = {
    2: "top-right",
    3: "bottom-right",
    4: "bottom-left",
    5: "top-left",
    6: "top-right",
    7: "bottom-right",
    8: "bottom-left",
}


def _oriented(orientation: int) -> Callable[[Path, dict[str, Any]], None]:
    def check(storage: Path, outputs: dict[str, Any]) -> None:
        thumb = decoded(storage, outputs["thumb"])
        assert (thumb.width, thumb.height) == ((250, 500) if orientation >= 5 else (500, 250))
        assert quadrant(thumb) == ORIENTED_CORNER[orientation], orientation

    return check


def _thumb(width: int, height: int, alpha: bool | None = None) -> Callable[[Path, dict[str, Any]], None]:
    def check(storage: Path, outputs: dict[str, Any]) -> None:
        thumb = decoded(storage, outputs["thumb"])
        assert (thumb.width, thumb.height) == (width, height)
        assert thumb.interpretation in ("srgb", "b-w") and thumb.format == "uchar"
        if alpha is not None:
            assert thumb.hasalpha() == alpha

    return check


def _first_frame(storage: Path, outputs: dict[str, Any]) -> None:
    thumb = decoded(storage, outputs["thumb"])
    assert (thumb.width, thumb.height) == (200, 150)
    assert thumb[0].avg() > 200 and thumb[1].avg() < 60  # red first frame, not the green ones


def _p3_converted(storage: Path, outputs: dict[str, Any]) -> None:
    thumb = decoded(storage, outputs["thumb"])
    assert thumb.get_typeof("icc-profile-data") == 0  # stripped: pixels are sRGB now
    # P3 (200, 100, 50) is sRGB (215, 93, 31): unconverted, the pixels would keep 200/100/50.
    got = [round(thumb[band].avg()) for band in range(3)]
    assert all(abs(g - e) <= 4 for g, e in zip(got, (215, 93, 31), strict=True)), got


def _medium_is_jpeg(storage: Path, outputs: dict[str, Any]) -> None:
    medium = decoded(storage, outputs["medium"])
    assert medium.get("vips-loader").startswith("jpegload")  # named .jpg, so written as JPEG


def build(storage: Path) -> list[Case]:
    """Write the corpus under ``storage/fullsize`` and return its cases."""
    full = storage / "fullsize"
    full.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []

    def save(name: str, image: pyvips.Image, outcome: str = "ok", check: Any = None, **options: Any) -> None:
        image.write_to_file(str(full / name), **options)
        cases.append(Case(name, outcome, check))

    def raw(name: str, data: bytes, outcome: str, check: Any = None) -> None:
        (full / name).write_bytes(data)
        cases.append(Case(name, outcome, check))

    raw("zero-bytes.jpg", b"", "UnsupportedImageError")
    raw("text-named.jpg", b"this is not an image, just text\n" * 20, "UnsupportedImageError")
    whole = pattern(1200, 900).jpegsave_buffer(Q=90)
    raw("truncated.jpg", whole[: len(whole) // 2], "UnsupportedImageError")
    raw("garbage-after-eoi.jpg", whole + b"\x00GARBAGE" * 500, "ok", _thumb(500, 375))
    raw("bomb-png.png", png_bomb(), "TooManyPixelsError")
    raw("bomb-jpg.jpg", jpeg_bomb(), "TooManyPixelsError")
    save("cmyk.jpg", pattern(800, 600, bands=4).copy(interpretation="cmyk"), check=_thumb(500, 375), Q=90)
    rgb16 = (pattern(700, 500).cast("ushort") * 256).copy(interpretation="rgb16")
    save("deep16.png", rgb16, check=_thumb(500, 357))
    grey_alpha = (
        pattern(600, 600, bands=1).bandjoin(pattern(600, 600, bands=1, seed=7)).copy(interpretation="b-w")
    )
    save("grey-alpha.png", grey_alpha, check=_thumb(500, 500, alpha=True))
    rgba = pattern(640, 480).bandjoin(
        (pattern(640, 480, bands=1, seed=3) > 128).ifthenelse(255, 0).cast("uchar")
    )
    save("palette-transparent.png", rgba, check=_thumb(500, 375, alpha=True), palette=True)
    frames = [pyvips.Image.black(200, 150, bands=3).linear(1, colour).cast("uchar")
              for colour in ([250, 0, 0], [0, 250, 0], [0, 250, 0])]  # fmt: skip
    strip = pyvips.Image.arrayjoin(frames, across=1).copy(interpretation="srgb")
    strip.set_type(pyvips.GValue.gint_type, "page-height", 150)
    save("animated.gif", strip, check=_first_frame)
    save("progressive.jpg", pattern(1600, 1200), check=_thumb(500, 375), Q=90, interlace=True)
    bright_corner = pyvips.Image.black(1000, 500, bands=3).draw_rect(
        [255, 255, 255], 0, 0, 500, 250, fill=True
    )
    for orientation in range(2, 9):
        image = bright_corner.cast("uchar").copy(interpretation="srgb")
        image.set_type(pyvips.GValue.gint_type, "orientation", orientation)
        save(f"orientation-{orientation}.jpg", image, check=_oriented(orientation), Q=90)
    p3 = (
        pyvips.Image.black(600, 400, bands=3)
        .linear(1, [200, 100, 50])
        .cast("uchar")
        .copy(interpretation="srgb")
    )
    p3.set_type(pyvips.GValue.blob_type, "icc-profile-data", _p3_profile())
    save("display-p3.jpg", p3, check=_p3_converted, Q=95)
    save("one-pixel.png", pattern(1, 1), check=_thumb(1, 1))
    save("strip.png", pattern(20000, 10), check=_thumb(500, 1))
    save(
        "modern-webp.webp",
        pattern(900, 900).bandjoin(pattern(900, 900, bands=1, seed=5)),
        check=_thumb(500, 500, alpha=True),
        Q=80,
    )
    save("modern-avif.avif", pattern(800, 600), check=_thumb(500, 375), Q=60, compression="av1")
    png_body = pattern(1500, 1000).pngsave_buffer()
    raw("png-named.jpg", png_body, "ok", _medium_is_jpeg)
    return cases


def _p3_profile() -> bytes:
    """The Display-P3 ICC profile libvips ships (attached by a transform into "p3")."""
    tagged = pyvips.Image.black(1, 1, bands=3).cast("uchar").copy(interpretation="srgb").icc_transform("p3")
    return bytes(tagged.get("icc-profile-data"))
