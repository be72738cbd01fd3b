"""Real image files for tests, written with pyvips at test time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyvips


def pattern(width: int, height: int, bands: int = 3, seed: int = 1) -> Any:
    """Smooth colour content (compresses like real art, unlike random noise)."""
    layers = [
        pyvips.Image.perlin(width, height, cell_size=max(16, max(width, height) // 5), seed=seed + k) * 100
        + 128
        for k in range(bands)
    ]
    image = layers[0].bandjoin(layers[1:]) if bands > 1 else layers[0]
    interpretation = "b-w" if bands in (1, 2) else "srgb"
    return image.cast("uchar").copy(interpretation=interpretation)


def write(storage: Path, name: str, image: Any, **save_options: Any) -> tuple[str, str]:
    """Save ``image`` as ``fullsize/name``; returns (filename, ext) as the board stores them."""
    path = storage / "fullsize" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    image.write_to_file(str(path), **save_options)
    filename, _, ext = name.rpartition(".")
    return filename, ext


def jpeg(storage: Path, name: str, width: int, height: int, **options: Any) -> tuple[str, str]:
    return write(storage, name, pattern(width, height), Q=options.pop("Q", 90), **options)
