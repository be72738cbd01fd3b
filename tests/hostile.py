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

DECODE_BUDGET_MB = 256
"""The corpus is run with this RENDER_DECODE_BUDGET_MB (and MAX_PIXELS=50000000)."""


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
    # Memory bombs: a few KB claiming a whole-image decode over the budget (DECODE_BUDGET_MB).
    save("bomb-12bit-rgba.avif", _flat(3200, 3200, bands=4, bits=16), "TooMuchMemoryError",
         compression="av1", bitdepth=12, effort=0, Q=10)  # fmt: skip
    save("bomb-interlaced-16bit.png", _flat(6000, 6000, bands=4, bits=16), "TooMuchMemoryError",
         interlace=True, compression=9)  # fmt: skip
    save("big-progressive.jpg", _flat(7000, 7000), check=_thumb(500, 500), interlace=True, Q=50)
    raw("many-scans.jpg", many_scan_jpeg(150), "TooManyScansError")
    raw("apng-decoy.png", apng(default=(0, 250, 0), first_frame=(250, 0, 0), default_is_frame=False),
        "UnsupportedImageError")  # fmt: skip
    raw("apng.png", apng(default=(250, 0, 0), first_frame=(250, 0, 0), default_is_frame=True), "ok",
        _red)  # fmt: skip
    raw("ultra-hdr.jpg", ultra_hdr(1600, 1200), "ok", _sdr_base("ultra-hdr.jpg"))
    raw("avif-decoy.avif", avif_decoy(), "ok", _red)
    return cases


def _solid_avif(width: int, height: int, colour: list[int]) -> bytes:
    image = pyvips.Image.black(width, height, bands=3).linear(1, colour).cast("uchar")
    return bytes(image.copy(interpretation="srgb").heifsave_buffer(compression="av1", keep="none", Q=60))


def avif_decoy() -> bytes:
    """An 800x600 red AVIF whose embedded thumbnail item (600x450, big enough for libvips'
    thumbnail() to use it instead of the primary image) is green: another picture."""
    return avif_with_thumbnail(_solid_avif(800, 600, [250, 0, 0]), _solid_avif(600, 450, [0, 250, 0]))


# --- assembling an AVIF with a thumbnail item (ISO BMFF boxes), from two one-item AVIFs ------


def _boxes(data: bytes, start: int, stop: int) -> dict[str, tuple[int, int]]:
    """The boxes in data[start:stop]: type -> (body start, end)."""
    found, pos = {}, start
    while pos < stop:
        size, kind = struct.unpack_from(">I4s", data, pos)
        found[kind.decode()] = (pos + 8, pos + size)
        pos += size
    return found


def _box(kind: str, body: bytes, full: bool = False) -> bytes:
    """A box; a full box (version 0, flags 0) when ``full``."""
    body = (b"\0" * 4 if full else b"") + body
    return struct.pack(">I4s", 8 + len(body), kind.encode()) + body


@dataclass(frozen=True)
class _Item:
    infe: bytes
    properties: list[bytes]
    indices: list[int]
    """ipma associations (bit 7: essential; 1-based into ``properties``)."""
    data: bytes


def _only_item(avif: bytes) -> _Item:
    """The one image item of an AVIF as libvips writes it (keep="none")."""
    top = _boxes(avif, 0, len(avif))
    meta = _boxes(avif, top["meta"][0] + 4, top["meta"][1])
    iinf, iloc = meta["iinf"], meta["iloc"][0]
    iprp = _boxes(avif, *meta["iprp"])
    ipco = _boxes(avif, *iprp["ipco"])
    properties = [avif[body - 8 : end] for body, end in sorted(ipco.values())]
    ipma = iprp["ipma"][0]
    count = avif[ipma + 10]
    # iloc v0: sizes (offset, length | base offset), 1 item: id, data ref, base, 1 extent.
    offset_size, length_size, base_size = avif[iloc + 4] >> 4, avif[iloc + 4] & 15, avif[iloc + 5] >> 4
    pos = iloc + 6 + 2 + 2 + 2
    base = int.from_bytes(avif[pos : pos + base_size], "big")
    pos += base_size + 2
    offset = base + int.from_bytes(avif[pos : pos + offset_size], "big")
    length = int.from_bytes(avif[pos + offset_size : pos + offset_size + length_size], "big")
    return _Item(
        avif[iinf[0] + 6 : iinf[1]], properties, list(avif[ipma + 11 : ipma + 11 + count]),
        avif[offset : offset + length],
    )  # fmt: skip


def avif_with_thumbnail(primary: bytes, thumbnail: bytes) -> bytes:
    """``primary``'s image as item 1 (the primary item), ``thumbnail``'s as item 2, linked to
    it by a 'thmb' reference: what a camera writes, except that here the pictures differ."""
    main, thumb = _only_item(primary), _only_item(thumbnail)
    thumb_infe = thumb.infe[:12] + struct.pack(">H", 2) + thumb.infe[14:]  # infe v2: item_ID at 12
    shift = len(main.properties)
    ipma = _box(
        "ipma",
        struct.pack(">I", 2)
        + struct.pack(">HB", 1, len(main.indices)) + bytes(main.indices)
        + struct.pack(">HB", 2, len(thumb.indices)) + bytes(i + shift for i in thumb.indices),
        full=True,
    )  # fmt: skip
    fixed = (
        _box("hdlr", b"\0" * 4 + b"pict" + b"\0" * 13, full=True),
        _box("pitm", struct.pack(">H", 1), full=True),
    )
    rest = (
        _box("iinf", struct.pack(">H", 2) + main.infe + thumb_infe, full=True),
        _box("iref", _box("thmb", struct.pack(">HHH", 2, 1, 1)), full=True),
        _box("iprp", _box("ipco", b"".join(main.properties + thumb.properties)) + ipma),
    )
    ftyp = primary[: _boxes(primary, 0, len(primary))["ftyp"][1]]

    def meta(data_at: int) -> bytes:
        extents = struct.pack(">HHHII", 1, 0, 1, data_at, len(main.data))
        extents += struct.pack(">HHHII", 2, 0, 1, data_at + len(main.data), len(thumb.data))
        iloc = _box("iloc", bytes([0x44, 0x00]) + struct.pack(">H", 2) + extents, full=True)
        return _box("meta", b"".join((*fixed, iloc, *rest)), full=True)

    data_at = len(ftyp) + len(meta(0)) + 8
    return ftyp + meta(data_at) + _box("mdat", main.data + thumb.data)


def _flat(width: int, height: int, bands: int = 3, bits: int = 8) -> pyvips.Image:
    """A flat image: it compresses to almost nothing whatever its size."""
    image = pyvips.Image.black(width, height, bands=bands).linear(1, 90)
    if bits == 16:
        return image.cast("ushort").copy(interpretation="rgb16")
    return image.cast("uchar").copy(interpretation="srgb")


def _red(storage: Path, outputs: dict[str, Any]) -> None:
    thumb = decoded(storage, outputs["thumb"])
    assert thumb[0].avg() > 200 and thumb[1].avg() < 60


def _sdr_base(name: str) -> Callable[[Path, dict[str, Any]], None]:
    """The outputs decode, as JPEG where the original's format is kept, in the SDR base's colours."""

    def check(storage: Path, outputs: dict[str, Any]) -> None:
        base = pyvips.Image.jpegload(str(storage / "fullsize" / name))
        for variant in ("medium", "thumb"):
            image = decoded(storage, outputs[variant])
            got = [image[band].avg() for band in range(3)]
            want = [base[band].avg() for band in range(3)]
            assert all(abs(g - w) < 3 for g, w in zip(got, want, strict=True)), (variant, got, want)
        assert decoded(storage, outputs["medium"]).get("vips-loader").startswith("jpegload")

    return check


def ultra_hdr(width: int, height: int) -> bytes:
    """An Ultra HDR JPEG (an SDR JPEG plus a gain map), as Android phones take, made by libvips."""
    hdr = (pattern(width, height).cast("float") / 255).copy(interpretation="scrgb")
    return bytes(hdr.uhdrsave_buffer(Q=98))


def many_scan_jpeg(scans: int) -> bytes:
    """A valid progressive JPEG (8x8 grey) of ``scans`` scans, assembled by hand: one DC scan,
    then each AC coefficient alone, first at Al=13 and refined bit by bit down to Al=0 (14
    scans per coefficient, 883 in all at most). All its coefficients are 0, so each scan's
    data is one Huffman code (EOB, or DC category 0) of 1 bit: a 0 padded with 1s."""

    def segment(marker: int, body: bytes) -> bytes:
        return struct.pack(">BBH", 0xFF, marker, len(body) + 2) + body

    def scan(ss: int, se: int, ah: int, al: int) -> bytes:
        return segment(0xDA, struct.pack(">BBBBBB", 1, 1, 0x00, ss, se, ah << 4 | al)) + b"\x7f"

    one_code = bytes([1] + [0] * 15) + b"\x00"  # one code of 1 bit, for symbol 0
    script = [scan(0, 0, 0, 0)]
    for k in range(1, 64):
        script.append(scan(k, k, 0, 13))
        script += [scan(k, k, bit, bit - 1) for bit in range(13, 0, -1)]
    return (
        b"\xff\xd8"
        + segment(0xDB, b"\x00" + b"\x01" * 64)
        + segment(0xC2, struct.pack(">BHHBBBB", 8, 8, 8, 1, 1, 0x11, 0))
        + segment(0xC4, b"\x00" + one_code + b"\x10" + one_code)
        + b"".join(script[:scans])
        + b"\xff\xd9"
    )


def apng(
    default: tuple[int, int, int], first_frame: tuple[int, int, int], *, default_is_frame: bool
) -> bytes:
    """A 2-frame APNG (200x150). Its default image (IDAT, what non-APNG decoders show) is
    ``default``; the first frame a browser shows is ``first_frame``: the IDAT itself when
    ``default_is_frame``, else the first fdAT."""
    width, height = 200, 150

    def rows(colour: tuple[int, int, int]) -> bytes:
        return zlib.compress((b"\x00" + bytes(colour) * width) * height, 9)

    def fctl(sequence: int) -> bytes:
        return _png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", sequence, width, height, 0, 0, 1, 10, 0, 0))

    chunks = [_png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))]
    chunks.append(_png_chunk(b"acTL", struct.pack(">II", 2, 0)))
    sequence = 0
    if default_is_frame:
        chunks += [fctl(0), _png_chunk(b"IDAT", rows(default))]
        sequence = 1
    else:
        chunks.append(_png_chunk(b"IDAT", rows(default)))
    for colour in ([first_frame] if not default_is_frame else []) + [(0, 0, 250)]:
        chunks.append(fctl(sequence))
        chunks.append(_png_chunk(b"fdAT", struct.pack(">I", sequence + 1) + rows(colour)))
        sequence += 2
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks) + _png_chunk(b"IEND", b"")


def _p3_profile() -> bytes:
    """The Display-P3 ICC profile libvips ships (attached by a transform into "p3")."""
    tagged = pyvips.Image.black(1, 1, bands=3).cast("uchar").copy(interpretation="srgb").icc_transform("p3")
    return bytes(tagged.get("icc-profile-data"))
