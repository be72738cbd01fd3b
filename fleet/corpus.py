"""Sample originals, made at run time from a fixed seed, for the demo, tests and benchmarks.

Perlin noise looks enough like drawn/photographed content that encoders and decoders do
realistic work (a flat or random image would compress far better or far worse). pyvips is
imported lazily: the rating worker's image has no libvips and never calls this.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import date, timedelta
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from fleet.board import Folder

# (kind, extension, weight): a board-like mix of uploads, mostly JPEG (some progressive), a
# fifth PNG (drawn art, some with transparency), a few GIF and WebP (a few of those with
# transparency too). The weights are an
# assumption, not a census; benchmarks also report every kind on its own. Extensions as boards
# store them: both jpg and jpeg occur.
FORMATS: tuple[tuple[str, str, int], ...] = (
    ("jpeg", "jpg", 48),
    ("jpeg-progressive", "jpeg", 12),
    ("png", "png", 14),
    ("png-alpha", "png", 8),
    ("gif", "gif", 6),
    ("webp", "webp", 10),
    ("webp-alpha", "webp", 2),
)
KINDS: tuple[str, ...] = tuple(kind for kind, _, _ in FORMATS)
EXTENSIONS: dict[str, str] = {kind: ext for kind, ext, _ in FORMATS}
WEIGHTS: dict[str, int] = {kind: weight for kind, _, weight in FORMATS}


@dataclass(frozen=True, slots=True)
class Sample:
    image_id: int
    filename: str
    ext: str
    kind: str
    width: int
    height: int
    seed: int

    @property
    def longest(self) -> int:
        return max(self.width, self.height)


def plan(
    count: int,
    seed: int = 1,
    min_edge: int = 300,
    max_edge: int = 4000,
    first_id: int = 1,
    kinds: Sequence[str] = (),
) -> list[Sample]:
    """What to generate: varied formats, sizes and aspect ratios, the same for the same seed.

    Kinds are drawn with the board-like weights, or taken in turn from ``kinds`` (a benchmark
    that reports every kind on its own wants the same number of each)."""
    rng = random.Random(seed)
    day0 = date(2025, 1, 1)
    samples = []
    for i in range(count):
        image_id = first_id + i
        kind = kinds[i % len(kinds)] if kinds else rng.choices(KINDS, list(WEIGHTS.values()))[0]
        # Log-uniform edge: plenty of small uploads, a tail of big scans.
        longest = int(min_edge * (max_edge / min_edge) ** rng.random())
        if kind == "gif":
            longest = min(longest, 1600)  # GIFs on boards are rarely larger; keeps the demo quick
        ratio = rng.uniform(0.5, 1.0)
        shorter = max(1, int(longest * ratio))
        width, height = (longest, shorter) if rng.random() < 0.5 else (shorter, longest)
        stored = f"{day0 + timedelta(days=i // 50):%Y-%m-%d}-{image_id}"
        samples.append(
            Sample(image_id, stored, EXTENSIONS[kind], kind, width, height, rng.randrange(1 << 30))
        )
    return samples


def _pixels(width: int, height: int, seed: int, alpha: bool, grain: bool) -> Any:
    import pyvips

    cell = max(32, max(width, height) // 6)

    def octaves(k: int) -> Any:
        coarse = pyvips.Image.perlin(width, height, cell_size=cell, seed=seed + k)
        fine = pyvips.Image.perlin(width, height, cell_size=max(8, cell // 10), seed=seed + 7 * k + 1)
        return coarse * 100 + fine * 40 + 128

    rgb = octaves(0).bandjoin([octaves(1), octaves(2)])
    if grain:  # photographic sensor noise; drawn art (PNG, GIF) is flat
        rgb = rgb + pyvips.Image.gaussnoise(width, height, sigma=3, mean=0, seed=seed)
    if alpha:
        mask = pyvips.Image.perlin(width, height, cell_size=cell * 2, seed=seed + 9) * 400 + 128
        rgb = rgb.bandjoin(mask)
    image = rgb.cast("uchar").copy(interpretation="srgb")
    return image


def write_sample(root: Path, sample: Sample) -> Path:
    """Write one sample original to ``root/fullsize/{filename}.{ext}``."""
    path = root / Folder.ORIGINALS / f"{sample.filename}.{sample.ext}"
    image = _pixels(
        sample.width,
        sample.height,
        sample.seed,
        alpha=sample.kind.endswith("-alpha"),
        grain=sample.kind.startswith("jpeg"),
    )
    # Q95: uploads are high-quality JPEGs, about 2 MB for 6 MP (the entropy-coded data is
    # what a decode costs, so a lighter file would flatter every decoder).
    if sample.kind == "jpeg":
        image.jpegsave(str(path), Q=95)
    elif sample.kind == "jpeg-progressive":
        image.jpegsave(str(path), Q=95, interlace=True)
    elif sample.kind in ("png", "png-alpha"):
        image.pngsave(str(path), compression=6, filter="all")  # as libpng (art tools) saves
    elif sample.kind == "gif":
        image.gifsave(str(path), effort=1)
    elif sample.kind in ("webp", "webp-alpha"):
        image.webpsave(str(path), Q=85, effort=1)
    else:  # pragma: no cover - plan() only makes known kinds
        raise ValueError(sample.kind)
    return path


def _write_sample_in_child(root: Path, sample: Sample) -> Path:
    import pyvips

    pyvips.concurrency_set(1)
    pyvips.cache_set_max(0)
    return write_sample(root, sample)


def generate(root: Path, samples: Sequence[Sample], processes: int = 2) -> None:
    """Write ``samples`` in parallel (spawned processes: libvips is not fork-safe)."""
    (root / Folder.ORIGINALS).mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
        for _ in pool.map(_write_sample_in_child, [root] * len(samples), samples, chunksize=4):
            pass
