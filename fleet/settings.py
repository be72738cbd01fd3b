"""One typed settings object, read from the environment once.

Every knob of the fleet lives here, so operators find them in one place and the README's
settings table can be checked against this file. Variables are upper-case field names,
e.g. ``THUMB_SIZE=400``; ``REDIS_URL``/``DATABASE_URL`` unset means "use the embedded default".
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any, get_type_hints


@dataclass(frozen=True, slots=True)
class Settings:
    # Where things live.
    redis_url: str | None = None
    """Redis for queues; unset: fleet commands start a private redis-server."""
    database_url: str | None = None
    """SQLAlchemy async URL; unset: a SQLite file under the storage root."""
    storage_path: Path = Path("storage")
    """Root holding fullsize/, thumbs/, medium/ and large/."""
    iqdb_url: str | None = None
    """IQDB server; unset: indexing is switched off."""
    namespace: str = "fleet"
    """Prefix of every queue and key fleet writes, so several fleets (or test runs) share a Redis."""

    # Rendering.
    thumb_size: int = 500
    thumb_format: str = "webp"
    thumb_quality: int = 75
    thumb_sharpen: bool = True
    medium_edge: int = 1280
    large_edge: int = 2048
    variant_quality: int = 90
    max_pixels: int = 100_000_000
    """Originals with more pixels than this are refused before any decode."""

    # The img worker.
    img_pool_size: int = 0
    """Render processes per img worker; 0 means the CPU count."""
    img_upload_reserve: int = 1
    """Render processes kept free of bulk work, on top of IMG_POOL_SIZE, so an upload during
    an archive run starts at once (bulk still uses IMG_POOL_SIZE processes)."""
    img_max_jobs: int = 0
    """Concurrent jobs per img worker; 0 means twice the pool size, so the pool never idles."""
    render_timeout_s: float = 120.0
    """A render running longer is stopped: its process is killed."""
    render_recycle_after: int = 500
    """Renders per process before it is replaced, so memory stays flat."""

    # Bulk re-rendering of the archive.
    bulk_batch_size: int = 16
    """Images per bulk job: fewer round trips (and the shape a GPU backend wants)."""
    bulk_max_queued: int = 4000
    """The feeder keeps at most this many images queued, so Redis stays flat whatever the archive."""
    bulk_max_jobs: int = 2
    """Bulk jobs a worker runs at once (each renders a whole batch across the pool)."""

    # The light workers (IQDB and database).
    light_max_jobs: int = 20
    """Concurrent jobs per IQDB or database worker (they wait on I/O, not CPU)."""
    iqdb_timeout_s: float = 10.0
    rating_prior_ttl_s: int = 300
    """How long the global rating prior (C, m) is cached in Redis."""
    review_every_s: int = 3600
    """How often the review-deadline cron runs (a divisor of a minute, hour or day)."""
    review_quorum: int = 3
    review_extension_days: int = 3

    # Queue behaviour, shared by all workers.
    poll_delay_s: float = 0.02
    """arq polls this often; at the 0.5 s default a busy queue is capped at max_jobs/0.5 jobs/s."""
    keep_result_s: int = 3600
    max_tries: int = 8
    """Tries of a job failing transiently before it is given up."""
    dead_letter_ttl_s: int = 7 * 24 * 3600
    """How long dead letters are kept."""
    lock_ttl_s: float = 10.0
    """A running job's lock lives this long unless its worker renews it (every third of it):
    a SIGKILLed worker's jobs run again elsewhere after about this long."""
    metrics_port: int = 9100
    """Prometheus /metrics of a worker process; 0 switches it off."""
    health_interval_s: float = 5.0
    """A replica beats twice per interval; `fleet health` calls it stale after one interval
    without a beat."""
    runtime_dir: Path = Path("/tmp/fleet-replicas")
    """Where each worker process registers its replicas, so `fleet health --self` checks the
    workers of this container (or host) only; keep it local to the container."""
    drain_grace_s: int = 30
    """On SIGTERM a worker takes no new jobs and gives running ones this long to finish;
    the rest are cancelled and go back to the queue."""
    retry_base_s: float = 1.0
    retry_cap_s: float = 300.0
    """Backoff before try n is a random time in [0, min(cap, base * 2**(n-1))] (full jitter)."""
    log_format: str = "console"
    """console or json."""
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``); keyword overrides win."""
        env = os.environ if environ is None else environ
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, raw, hints[f.name])
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def as_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process."""
        env: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, bool):
                value = "1" if value else "0"
            env[f.name.upper()] = str(value)
        return env

    @property
    def pool_size(self) -> int:
        return self.img_pool_size or os.cpu_count() or 1

    @property
    def img_concurrency(self) -> int:
        return self.img_max_jobs or 2 * self.pool_size


def _parse(name: str, raw: str, hint: Any) -> Any:
    text = str(hint)
    try:
        if hint is bool:
            if raw.lower() in {"1", "true", "yes", "on"}:
                return True
            if raw.lower() in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if hint is int:
            return int(raw)
        if hint is float:
            return float(raw)
        if hint is Path:
            return Path(raw)
        if "str" in text:
            return raw
    except ValueError:
        raise ValueError(
            f"setting {name.upper()}={raw!r} is not a valid {getattr(hint, '__name__', text)}"
        ) from None
    raise TypeError(f"setting {name}: unsupported type {text}")  # pragma: no cover - a programming error


@cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings.from_env()


__all__ = ["Settings", "get_settings"]
