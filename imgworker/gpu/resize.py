"""Antialiased resize and the thumbnail's sharpening, written once against the array API: numpy
in the libraries' CPU mode (tests), CuPy on a GPU. Pure array code, no codec, no queue.

The resize is libvips' reduce done the way a GPU likes it: a separable Lanczos3 filter whose
support widens with the shrink factor (so downscaling averages every input pixel, never
aliases), as a short loop over the taps of gathers and multiply-adds on the whole image. The
taps (indices and weights) are a few KB, computed on the host per axis.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

LANCZOS_A = 3
"""libvips' default kernel for thumbnails (``vips_resize``): Lanczos3."""

_SHARPEN = ((-1.0, -1.0, -1.0), (-1.0, 32.0, -1.0), (-1.0, -1.0, -1.0))
_SHARPEN_SCALE = 24.0
"""The CPU path's mask (imgworker.render.steps._SHARPEN_MASK): "mild" vipsthumbnail sharpening."""


def fit(width: int, height: int, box_width: int, box_height: int) -> tuple[int, int]:
    """The size an image resized into the box ends up (never upscaled), as libvips'
    ``thumbnail_image(..., size="down")`` computes it from an image in memory."""
    if width <= box_width and height <= box_height:
        return width, height
    shrink = max(width / box_width, height / box_height)
    # Halves round up, as libvips rounds (Python's round() would take 312.5 to 312, not 313).
    return max(1, math.floor(width / shrink + 0.5)), max(1, math.floor(height / shrink + 0.5))


def _lanczos(x: np.ndarray) -> np.ndarray:
    inside = np.abs(x) < LANCZOS_A
    return np.where(inside, np.sinc(x) * np.sinc(x / LANCZOS_A), 0.0)


def taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Input indices (``size_out`` x K, edges clamped) and normalised weights of each output
    pixel along one axis, pixel centres aligned as libvips' reduce aligns them."""
    scale = size_in / size_out
    stretch = max(scale, 1.0)
    support = LANCZOS_A * stretch
    centres = (np.arange(size_out) + 0.5) * scale - 0.5
    count = math.ceil(2 * support) + 1
    first = np.floor(centres - support).astype(np.int64) + 1
    index = first[:, None] + np.arange(count)[None, :]
    weights = _lanczos((index - centres[:, None]) / stretch)
    weights /= weights.sum(axis=1, keepdims=True)
    return np.clip(index, 0, size_in - 1), weights.astype(np.float32)


def resize(xp: Any, image: Any, width: int, height: int) -> Any:
    """``image`` (H x W x bands, float32, on the array module ``xp``) resized to ``width`` x
    ``height``, one axis after the other (the one shrinking more first: less to filter next)."""
    in_height, in_width = image.shape[:2]
    axes = sorted(((0, in_height, height), (1, in_width, width)), key=lambda a: a[2] / a[1])
    for axis, size_in, size_out in axes:
        if size_in != size_out:
            image = _resize_axis(xp, image, axis, size_in, size_out)
    return image


def _resize_axis(xp: Any, image: Any, axis: int, size_in: int, size_out: int) -> Any:
    """One axis: for each tap, gather the input rows (or columns) it reads and add them in
    with their weights. K taps, so K passes over the output: no dense matrix."""
    # Tap-major and contiguous, copied to the device once: row k is every pixel's k-th tap.
    index, weights = (xp.asarray(np.ascontiguousarray(a.T)) for a in taps(size_in, size_out))
    shape = list(image.shape)
    shape[axis] = size_out
    out = xp.zeros(shape, dtype=xp.float32)
    gathered = xp.empty(shape, dtype=xp.float32)
    for k in range(index.shape[0]):
        xp.take(image, index[k], axis=axis, out=gathered)
        gathered *= weights[k].reshape((-1, 1, 1) if axis == 0 else (1, -1, 1))
        out += gathered
    return out


def sharpen(xp: Any, image: Any) -> Any:
    """The CPU path's 3 x 3 sharpening (edges repeated), on float pixels already rounded to
    8 bits, as libvips' integer convolution sees them."""
    padded = xp.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    height, width = image.shape[:2]
    out = xp.zeros_like(image)
    for dy, row in enumerate(_SHARPEN):
        for dx, weight in enumerate(row):
            out += weight * padded[dy : dy + height, dx : dx + width]
    return out / _SHARPEN_SCALE


def to_uint8(xp: Any, image: Any) -> Any:
    """Float pixels rounded and clipped into 0-255."""
    return xp.clip(xp.rint(image), 0, 255).astype(xp.uint8)
