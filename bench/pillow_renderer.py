"""The replaced design's library: Pillow with LANCZOS, one decode per upload, the same
variants imgworker renders.

It imports only Pillow and the standard library, so it also runs under another interpreter
whose Pillow is Pillow-SIMD (source-only, never a fleet dependency): ``python -m
bench.pillow_renderer`` reads one JSON request per line and answers the seconds it took.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TypedDict


class PillowVariant(TypedDict):
    folder: str
    edge: int
    quality: int
    format: str
    """The output format, already resolved (the original's own or the variant's)."""
    always: bool


def render(source: Path, out: Path, filename: str, variants: list[PillowVariant]) -> None:
    """Write each variant of ``source`` under ``out/{folder}/``.

    As strong as Pillow gets, by the cascade imgworker uses: a JPEG is decoded once with
    ``draft`` (DCT scaling to the largest size wanted), and each variant is resized from the
    one before it, largest first."""
    from PIL import Image, ImageOps

    with Image.open(source) as opened:
        opened.seek(0)
        edges = [v["edge"] for v in variants if v["always"] or max(opened.size) > v["edge"]]
        if edges and opened.format == "JPEG":
            opened.draft("RGB", _fit(opened.size, max(edges)))
        image = ImageOps.exif_transpose(opened)
        has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
        longest = max(opened.size)
        for variant in sorted(variants, key=lambda v: -v["edge"]):
            if not variant["always"] and longest <= variant["edge"]:
                continue
            image.thumbnail((variant["edge"], variant["edge"]), Image.Resampling.LANCZOS)
            fmt = variant["format"]
            target = out / variant["folder"]
            target.mkdir(parents=True, exist_ok=True)
            path = target / f"{filename}.{'jpg' if fmt == 'jpeg' else fmt}"
            _save(image, path, fmt, variant["quality"])


def _fit(size: tuple[int, int], edge: int) -> tuple[int, int]:
    scale = min(1.0, edge / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _save(image: Any, path: Path, fmt: str, quality: int) -> None:
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
        image.save(path, "PNG", compress_level=6)
    elif fmt == "gif":
        image.save(path, "GIF")
    else:
        raise ValueError(fmt)


def serve() -> None:
    """One request per stdin line: {"source", "out", "filename", "variants"} -> {"seconds"}."""
    for line in sys.stdin:
        request = json.loads(line)
        started = time.perf_counter()
        render(Path(request["source"]), Path(request["out"]), request["filename"], request["variants"])
        print(json.dumps({"seconds": time.perf_counter() - started}), flush=True)


if __name__ == "__main__":
    serve()
