"""The floors CI enforces (quick mode) and the targets a full run is reported against.

Ratios only: both sides are measured in the same run on the same machine, so a noisy,
shared machine moves both. Absolute times are printed, never asserted.
"""

from __future__ import annotations

# `fleet bench --quick` fails when a ratio falls under its floor.
FLOORS: dict[str, float] = {
    "efficiency": 0.80,  # fleet end to end / the same renders on a direct pool
    "cascade_speedup": 1.2,  # three independent renders / one-decode cascade
    "pillow_speedup": 1.3,  # Pillow LANCZOS / cascade
    # bucket / folder, moto serving the bucket on the same 2 cores: 0.77-0.88 measured at 3.38
    # requests per render (moto ~8-11 % of the pool's CPU), 0.59-0.72 at 5.45 (a HEAD before
    # every PUT); the other engineers' load moves it by 0.1, so this floor only catches a gross
    # regression: tests/test_s3.py pins the requests a render makes exactly.
    "s3_ratio": 0.65,
}

# Full-mode targets: reported as met or missed, with the measured value.
TARGETS: dict[str, tuple[str, float]] = {
    "efficiency": (">=", 0.90),
    "cascade_speedup": (">=", 1.3),
    "pillow_speedup": (">=", 1.5),
    "fraction_of_limit": (">=", 0.60),
    "idle_queue_to_start_p50_ms": ("<=", 20.0),
    "idle_queue_to_start_p99_ms": ("<=", 100.0),
    "bulk_feeder_images_per_s": (">=", 20000.0),
    "thumbnail_p95_ratio": ("<=", 2.0),
    "fleet_health_start_s": ("<=", 0.3),  # a container healthcheck, every few seconds
    "s3_ratio": (">=", 0.90),  # renders/s with a bucket (moto on loopback) / on a local folder
}
