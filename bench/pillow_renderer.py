"""The replaced design's library: Pillow with LANCZOS, one decode per upload, the same
variants imgworker renders.

It imports only Pillow and the standard library, so it also runs as a script under another
interpreter whose Pillow is Pillow-SIMD (source-only, never a fleet dependency): it then
reads one JSON request per line and answers the CPU seconds it took.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TypedDict

# imgworker's "mild" sharpening of thumbnails: the same 3x3 mask, colour bands only.
_SHARPEN = ((3, 3), (-1, -1, -1, -1, 32, -1, -1, -1, -1), 24)


class PillowVariant(TypedDict):
    folder: str
    name: str
    """The output file's name, as imgworker names it."""
    width: int
    height: int
    """The output fits in width x height."""
    quality: int
    format: str | None
    """The output format, already resolved (the original's own or the variant's)."""
    sharpen: bool
    always: bool


def render(source: Path, out: Path, variants: list[PillowVariant]) -> None:
    """Write each variant of ``source`` under ``out/{folder}/``.

    As strong as Pillow gets, by the cascade imgworker uses: a JPEG is decoded once with
    ``draft`` (DCT scaling to the largest size wanted), and each variant is resized from the
    one before it, largest first."""
    from PIL import Image, ImageOps

    with Image.open(source) as opened:
        opened.seek(0)
        width, height = opened.size  # before draft() shrinks it
        wanted = sorted(
            (v for v in variants if v["always"] or width > v["width"] or height > v["height"]),
            key=lambda v: -v["width"] * v["height"],
        )
        if wanted and opened.format == "JPEG":
            box = (max(v["width"] for v in wanted), max(v["height"] for v in wanted))
            opened.draft("RGB", _fit(opened.size, box))
        image = ImageOps.exif_transpose(opened)
        has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
        for variant in wanted:
            image.thumbnail((variant["width"], variant["height"]), Image.Resampling.LANCZOS)
            target = out / variant["folder"]
            target.mkdir(parents=True, exist_ok=True)
            final = _sharpen(image) if variant["sharpen"] else image
            _save(final, target / variant["name"], variant["format"], variant["quality"])


def _fit(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """The largest size within ``box`` (rounded down, so draft() may reduce to it)."""
    scale = min(1.0, box[0] / size[0], box[1] / size[1])
    return max(1, int(size[0] * scale)), max(1, int(size[1] * scale))


def _sharpen(image: Any) -> Any:
    from PIL import Image, ImageFilter

    size, kernel, scale = _SHARPEN
    mask = ImageFilter.Kernel(size, kernel, scale)
    if image.mode == "RGBA":
        *colour, alpha = image.split()
        return Image.merge("RGBA", [band.filter(mask) for band in colour] + [alpha])
    return image.filter(mask)


def _save(image: Any, path: Path, fmt: str | None, quality: int) -> None:
    from PIL import Image

    if fmt == "jpeg":
        if image.mode == "RGBA":
            white = Image.new("RGB", image.size, (255, 255, 255))
            white.paste(image, mask=image.getchannel("A"))
            image = white
        image.save(path, "JPEG", quality=quality)  # no Huffman optimisation, as imgworker
    elif fmt == "webp":
        image.save(path, "WEBP", quality=quality)
    elif fmt == "png":
        image.save(path, "PNG", compress_level=3)  # zlib level 3; Pillow always filters rows adaptively
    elif fmt == "gif":
        image.save(path, "GIF")
    else:
        raise ValueError(fmt)


def serve() -> None:
    """First line out: this Pillow's version and codecs. Then one request per stdin line,
    {"source", "out", "variants"} -> {"seconds"}."""
    import PIL
    from PIL import features

    codecs = {name: bool(features.check(name)) for name in ("jpg", "zlib", "webp")}
    print(json.dumps({"version": PIL.__version__, "codecs": codecs}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        started = time.process_time()  # CPU seconds, as the parent times its own renderers
        render(Path(request["source"]), Path(request["out"]), request["variants"])
        print(json.dumps({"seconds": time.process_time() - started}), flush=True)


if __name__ == "__main__":
    serve()
