"""GPU backend benchmark (``bench/gpu.sh``) and the WebP effort table (``fleet bench``).

- effort: bytes against CPU time of the 500 px WebP thumbnail for efforts 0-6, on the
  corpus's thumbnails: what a GPU leaves on the CPU is this encode.
- gpu: renders/s of the GPU backend against the CPU pool per core on the corpus's baseline
  JPEGs, a batch-size sweep, and the PSNR of every GPU output against the pyvips path's.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def psnr(a: Any, b: Any) -> float:
    """Peak signal-to-noise ratio in dB of two 8-bit images of one size (inf when equal)."""
    if a.shape != b.shape:
        raise ValueError(f"sizes differ: {a.shape} and {b.shape}")
    mse = float(np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)
