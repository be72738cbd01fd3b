"""One typed settings object, read from the environment once, and checked at start.

Every knob of the fleet lives here, so operators find them in one place and the README's
settings table can be checked against this file. Variables are upper-case field names,
e.g. ``THUMB_QUALITY=80``; ``REDIS_URL``/``DATABASE_URL`` unset means "use the embedded default".
Where the board (shuushuu-api) has its own variable for the same thing, fleet reads that too
(``BOARD_NAMES``), so a board's ``.env`` works unchanged. A value that cannot work is refused
when the settings are built, in one line naming the variable, its value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any, get_type_hints
from urllib.parse import unquote, urlsplit

from fleet.cpus import usable_cpus
from fleet.errors import FleetError
from fleet.render_settings import DECODE_BUDGET_MB, FORMAT_OF_EXT, MAX_PIXELS, RenderSettings

_RENDER = RenderSettings()


class SettingsError(FleetError, ValueError):
    """A setting that cannot work; the message names the variable, its value and what is allowed."""


@dataclass(frozen=True, slots=True)
class Settings:
    # Where things live.
    redis_url: str | None = None
    """Redis for queues; unset: fleet commands start a private redis-server. The board's
    ARQ_REDIS_URL wins over REDIS_URL (on the board, REDIS_URL is its cache). Behind Redis
    Sentinel: ``redis+sentinel://[user:password@]host1:26379,host2:26379/mymaster/0``."""
    database_url: str | None = None
    """SQLAlchemy async URL; unset: a SQLite file under the storage root."""
    storage_path: Path = Path("storage")
    """Root holding fullsize/, thumbs/, medium/ and large/."""
    storage_url: str | None = None
    """Where img workers read originals and write outputs: unset, the folder STORAGE_PATH;
    ``s3://BUCKET``, an S3-compatible bucket (R2, S3, MinIO) at R2_ENDPOINT, so replicas on
    several hosts share nothing but Redis, the database and the bucket."""
    r2_endpoint: str | None = None
    """The bucket's S3 endpoint (the board's name); unset: AWS S3 in STORAGE_REGION."""
    r2_access_key_id: str | None = field(default=None, repr=False)
    r2_secret_access_key: str | None = field(default=None, repr=False)
    storage_region: str = "auto"
    """The bucket's region ("auto" for R2)."""
    r2_public_bucket: str | None = None
    """With STORAGE_URL=r2://: the bucket of images whose status is public (1, 2, -1)."""
    r2_private_bucket: str | None = None
    """With STORAGE_URL=r2://: the bucket of every other image."""
    iqdb_url: str | None = None
    """IQDB server; unset: indexing is switched off. Or the board's IQDB_HOST + IQDB_PORT."""
    namespace: str = "fleet"
    """Prefix of every queue and key fleet writes, so several fleets (or test runs) share a Redis."""
    enqueue_replicas: int = 1
    """Behind Sentinel (``redis+sentinel://``): an enqueue returns only once this many replicas
    hold it (Redis ``WAIT``), so a failover, which promotes the most up-to-date replica, cannot
    lose it; 0: do not wait (replication is asynchronous). A plain URL never waits."""
    enqueue_wait_s: float = 1.0
    """How long an enqueue waits for ENQUEUE_REPLICAS; past it, EnqueueError (queue it again
    with the same job id: a job already there is not queued twice)."""

    # Rendering: the fields of RenderSettings (``render``), with its defaults, and the limits.
    thumb_width: int = _RENDER.thumb_width
    thumb_height: int = _RENDER.thumb_height
    thumb_format: str = _RENDER.thumb_format
    thumb_quality: int = _RENDER.thumb_quality
    thumb_sharpen: bool = _RENDER.thumb_sharpen
    thumb_effort: int = _RENDER.thumb_effort
    """WebP encode effort of the thumbnail, 0-6 (libvips' default 4): lower is faster and
    larger. With a GPU backend the WebP encode is what stays on the CPU."""
    medium_edge: int = _RENDER.medium_edge
    large_edge: int = _RENDER.large_edge
    variant_quality: int = _RENDER.variant_quality
    max_pixels: int = MAX_PIXELS
    """Originals with more pixels than this are refused before any decode."""

    # The img worker.
    img_pool_size: int = 0
    """Render processes per img worker; 0 means the CPUs this process may use (its affinity
    mask, capped by a cgroup v2 CPU quota)."""
    img_upload_reserve: int = 1
    """Render processes kept free of bulk work, on top of IMG_POOL_SIZE, so an upload during
    an archive run starts at once (bulk still uses IMG_POOL_SIZE processes)."""
    img_max_jobs: int = 0
    """Concurrent jobs per img worker; 0 means twice the pool size, so the pool never idles."""
    render_timeout_s: float = 120.0
    """A render running longer is stopped: its process is killed."""
    render_recycle_after: int = 500
    """Renders per process before it is replaced, so memory stays flat."""
    render_memory_mb: int = 1536
    """Address-space limit of each render process (RLIMIT_AS); an allocation past it fails
    that image for good (TooMuchMemoryError). 0: no limit. A normal render maps ~220-420 MB."""
    render_decode_budget_mb: int = DECODE_BUDGET_MB
    """Formats decoded whole at once (AVIF/HEIF, interlaced PNG, progressive JPEG, GIF) are
    refused from the header when their decode would need more memory than this. 0: no budget."""
    render_backend: str = "cpu"
    """cpu: the render process pool. gpu: baseline JPEGs decoded and resized in batches on a
    GPU (the ``fleet[gpu]`` extra), everything else on the pool, in the same worker."""
    gpu_fallback: str = "refuse"
    """With RENDER_BACKEND=gpu and no usable GPU: refuse to start (one line saying why), or
    ``cpu``: start on the process pool alone."""
    gpu_device: str = "0"
    """The CUDA device of the GPU backend (one worker process per GPU). ``cpu`` runs the same
    code in the libraries' CPU mode: for tests only, it is slower than the pool."""
    gpu_batch_size: int = 16
    """The GPU backend decodes and resizes this many originals at once..."""
    gpu_batch_wait_ms: float = 20.0
    """...or fewer, once the first has waited this long."""
    gpu_max_pixels: int = 40_000_000
    """Larger JPEGs go to the pool: each is decoded whole on the GPU (no shrink-on-load)."""

    # Bulk re-rendering of the archive.
    bulk_batch_size: int = 16
    """Images per bulk job: fewer round trips (and the shape a GPU backend wants)."""
    bulk_max_queued: int = 4000
    """The feeder keeps at most this many images queued, so Redis stays flat whatever the archive."""
    bulk_max_jobs: int = 2
    """Bulk jobs a worker runs at once (each renders a whole batch across the pool)."""
    bulk_run_ttl_s: int = 30 * 24 * 3600
    """A bulk run's keys in Redis (counters, cursor, done-bitmap) expire this long after the
    run's last activity, so abandoned or planted runs do not stay forever."""

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
    admin_action_retention_days: int = 730
    """Audit rows (admin_actions) older than this are pruned daily, as the board's own job did."""

    # Queue behaviour, shared by all workers.
    poll_delay_s: float = 0.02
    """arq polls this often; at the 0.5 s default a busy queue is capped at max_jobs/0.5 jobs/s."""
    wake_on_enqueue: bool = True
    """An idle worker waits in Redis for a wake token each enqueue pushes (see fleet.wake)
    instead of polling every POLL_DELAY_S; off: arq's polling as before."""
    idle_poll_s: float = 5.0
    """An idle waking worker still polls this often, for jobs no token announced (queued by
    stock arq clients, or left by a killed worker); deferred jobs and crons start on time."""
    keep_result_s: int = 3600
    """Board name: ARQ_KEEP_RESULT."""
    max_tries: int = 8
    """Tries of a job failing transiently before it is given up."""
    dead_letter_ttl_s: int = 7 * 24 * 3600
    """How long dead letters are kept."""
    dead_letter_max: int = 10_000
    """Dead letters kept per queue; beyond it the oldest are dropped (and counted in the
    fleet_dead_letters_dropped gauge and `fleet dead list`)."""
    job_expiry_s: int = 7 * 24 * 3600
    """A queued job not started this long after it was due is given up (arq's default is a day):
    its key expires, and a worker that meets its queue entry dead-letters it as expired."""
    lock_ttl_s: float = 10.0
    """A running job's lock lives this long unless its worker renews it (every third of it):
    a SIGKILLed worker's jobs run again elsewhere after about this long."""
    metrics_port: int = 9100
    """Prometheus /metrics of a worker process; 0 switches it off."""
    metrics_host: str = "127.0.0.1"
    """The address /metrics listens on: loopback by default; 0.0.0.0 where a Prometheus
    scrapes from another host or container (compose sets it)."""
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
    log_format: str = "auto"
    """auto (JSON when stderr is not a terminal, as in a container), console or json."""
    log_level: str = "INFO"

    # The operators' page (`fleet web`).
    web_host: str = "127.0.0.1"
    """Where `fleet web` listens; loopback by default, so only this host sees the page."""
    web_port: int = 8400
    web_token: str | None = None
    """Unset: the page is read-only (no actions, every POST answers 403). Set: retry and purge
    need it, typed once in the page and sent as ``Authorization: Bearer``. Never shown."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            checked = _check(f.name, value)
            if checked is not value:
                object.__setattr__(self, f.name, checked)
        if self.storage_url == "r2://" and not (self.r2_public_bucket and self.r2_private_bucket):
            error = SettingsError(
                "setting STORAGE_URL=r2:// needs R2_PUBLIC_BUCKET and R2_PRIVATE_BUCKET (the board's buckets)"
            )
            error.field_name = "storage_url"  # type: ignore[attr-defined]
            raise error

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``); keyword overrides win.

        Raises :class:`SettingsError` naming the variable that was read."""
        env = os.environ if environ is None else environ
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        read_from: dict[str, str] = {}
        for f in fields(cls):
            found = _lookup(f.name, env)
            if found is not None:
                name, raw = found
                read_from[f.name] = name
                values[f.name] = _parse(name, raw, hints[f.name])
        values.update(overrides)
        try:
            return cls(**values)
        except SettingsError as exc:
            field_name = getattr(exc, "field_name", None)
            variable = read_from.get(field_name or "")
            if variable and variable != (field_name or "").upper():
                raise SettingsError(str(exc).replace(f"{field_name.upper()}=", f"{variable}=", 1)) from None  # type: ignore[union-attr]
            raise

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def as_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process."""
        env: dict[str, str] = {"IQDB_HOST": "", "IQDB_PORT": ""}  # iqdb_url says it all
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                value = "1" if value else "0"
            text = "" if value is None else str(value)  # "" is unset: nothing inherited wins
            for name in (f.name.upper(), *BOARD_NAMES.get(f.name, ())):
                env[name] = text
        return env

    @property
    def confirm_replicas(self) -> int:
        """Replicas each enqueue waits for: ENQUEUE_REPLICAS behind Sentinel, else none."""
        sentinel = (self.redis_url or "").startswith(f"{SENTINEL_SCHEME}:")
        return self.enqueue_replicas if sentinel else 0

    @property
    def render(self) -> RenderSettings:
        """The render settings: every field of RenderSettings is the setting of its name
        (IQDB_URL set makes the IQDB JPEG)."""
        same = {f.name: getattr(self, f.name) for f in fields(RenderSettings) if f.name != "iqdb"}
        return RenderSettings(**same, iqdb=self.iqdb_url is not None)

    @property
    def pool_size(self) -> int:
        return self.img_pool_size or usable_cpus()

    @property
    def img_concurrency(self) -> int:
        return self.img_max_jobs or 2 * self.pool_size


# --- the board's names --------------------------------------------------------------------------

BOARD_NAMES: dict[str, tuple[str, ...]] = {
    "redis_url": ("ARQ_REDIS_URL",),
    "thumb_width": ("MAX_THUMB_WIDTH",),
    "thumb_height": ("MAX_THUMB_HEIGHT",),
    "thumb_quality": ("THUMBNAIL_QUALITY",),
    "variant_quality": ("LARGE_QUALITY",),
    "max_tries": ("ARQ_MAX_TRIES",),
    "keep_result_s": ("ARQ_KEEP_RESULT",),
}
"""shuushuu-api's variables for fleet's settings (``app/config.py``). ``DATABASE_URL``,
``STORAGE_PATH``, ``MEDIUM_EDGE``, ``LARGE_EDGE``, ``REVIEW_QUORUM`` and
``REVIEW_EXTENSION_DAYS`` share fleet's own names; ``IQDB_HOST`` + ``IQDB_PORT`` make the IQDB URL."""

_BOARD_FIRST = {"redis_url"}
"""Where the board's name wins over fleet's: the board's REDIS_URL is its cache (DB 0) and
ARQ_REDIS_URL its queue (DB 1); fleet's queue belongs beside the board's."""


def _lookup(field_name: str, env: Mapping[str, str]) -> tuple[str, str] | None:
    """The (variable, value) a field is read from, or None when unset."""
    own = field_name.upper()
    names = (
        (*BOARD_NAMES.get(field_name, ()), own)
        if field_name in _BOARD_FIRST
        else (own, *BOARD_NAMES.get(field_name, ()))
    )
    found = [(name, env[name]) for name in names if env.get(name, "") != ""]
    if field_name == "iqdb_url" and env.get("IQDB_HOST"):
        found.append(("IQDB_HOST", f"http://{env['IQDB_HOST']}:{env.get('IQDB_PORT') or 5588}"))
    if not found:
        return None
    if field_name not in _BOARD_FIRST and len({value for _, value in found}) > 1:
        told = " and ".join(f"{name}={value!r}" for name, value in found)
        raise SettingsError(f"settings {told} disagree: set one of them")
    return found[0]


def env_names() -> frozenset[str]:
    """Every environment variable fleet reads."""
    own = {f.name.upper() for f in fields(Settings)}
    board = {name for names in BOARD_NAMES.values() for name in names}
    return frozenset(own | board | {"IQDB_HOST", "IQDB_PORT"})


# --- checks -------------------------------------------------------------------------------------

_DATABASE_DRIVERS = {
    "sqlite+aiosqlite": None,
    "mysql+aiomysql": None,
    "mariadb+aiomysql": None,
    "postgresql+asyncpg": None,
    "sqlite": "sqlite+aiosqlite://",
    "mysql": "mysql+aiomysql://",
    "mariadb": "mysql+aiomysql://",
    "mysql+pymysql": "mysql+aiomysql://",
    "mysql+mysqldb": "mysql+aiomysql://",
    "postgresql": "postgresql+asyncpg://",
    "postgres": "postgresql+asyncpg://",
    "postgresql+psycopg2": "postgresql+asyncpg://",
    "postgresql+psycopg": "postgresql+asyncpg://",
}


def _one_of(*allowed: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in allowed else "one of " + ", ".join(allowed)


def _at_least(low: float, high: float | None = None) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if v < low or (high is not None and v > high):
            return f"from {low:g} to {high:g}" if high is not None else f"at least {low:g}"
        return None

    return check


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """``url`` without its ``user:password@``, and the (percent-decoded) user and password.

    The credentials end at the last ``@`` before the host, so a raw password holding ``#``,
    ``/``, ``?`` or ``@`` is read whole instead of starting a fragment, path or query;
    ``%23``-style escapes are decoded."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url, None, None
    userinfo, _, host = rest.rpartition("@")
    user, colon, password = userinfo.partition(":")
    return f"{scheme}://{host}", unquote(user) or None, unquote(password) if colon else None


def masked_url(url: str) -> str:
    """``url`` with any ``user:password@`` shown as ``***@``: the one way to print a URL."""
    clean, user, password = split_credentials(url)
    if user is None and password is None:
        return url
    scheme, _, host = clean.partition("://")
    return f"{scheme}://***@{host}"


SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379


@dataclass(frozen=True, slots=True)
class SentinelUrl:
    """A ``redis+sentinel://`` URL read: the sentinels to ask, the primary's name, the DB."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    database: int


def parse_sentinel_url(url: str) -> SentinelUrl:
    """``redis+sentinel://[user:password@]host1[:26379],host2[:26379]/master[/db]`` read
    (credentials, which are the primary's, stripped first: see :func:`split_credentials`).

    One form, so a typo is refused at start (ValueError saying what is wrong) instead of a
    worker asking the wrong sentinels; the port defaults to 26379 and the database to 0."""
    scheme, sep, rest = split_credentials(url)[0].partition("://")
    if scheme != SENTINEL_SCHEME or not sep:
        raise ValueError(f"not a {SENTINEL_SCHEME}:// URL")
    hosts, _, path = rest.split("?", 1)[0].partition("/")
    master, _, db = path.strip("/").partition("/")
    if not master:
        raise ValueError("no primary's name after the sentinels (e.g. /mymaster/0)")
    if not re.fullmatch(r"\d*", db):
        raise ValueError(f"database {db!r} is not a number")
    return SentinelUrl(tuple(_sentinel(h) for h in hosts.split(",")), master, int(db or 0))


def _sentinel(address: str) -> tuple[str, int]:
    host, colon, port = address.rpartition(":") if ":" in address else (address, "", "")
    if not host or (colon and not port.isdigit()):
        raise ValueError(f"sentinel {address!r} is not host[:port]")
    return host, int(port) if colon else SENTINEL_PORT


def _redis_url(v: Any) -> str | None:
    if v is None or not v.startswith(f"{SENTINEL_SCHEME}:"):
        return _url("redis", "rediss", "unix", SENTINEL_SCHEME)(v)
    try:
        parse_sentinel_url(v)
    except ValueError as exc:
        return f"{SENTINEL_SCHEME}://[user:password@]host1:26379,host2:26379/master[/db] ({exc})"
    return None


def _url(*schemes: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if v is None:
            return None
        parts = urlsplit(split_credentials(v)[0])
        try:
            parts.port  # noqa: B018 - raises ValueError on a port that is not a number
        except ValueError:
            return "a URL with a numeric port: scheme://[user:password@]host[:port]"
        if parts.scheme not in schemes or not (parts.netloc or parts.path):
            return "a URL starting " + " or ".join(f"{s}://" for s in schemes)
        return None

    return check


def _database_url(v: Any) -> str | None:
    if v is None:
        return None
    scheme = v.split("://", 1)[0].lower() if "://" in v else ""
    if scheme not in _DATABASE_DRIVERS:
        return "an async SQLAlchemy URL: postgresql+asyncpg://, mysql+aiomysql:// or sqlite+aiosqlite:///"
    if hint := _DATABASE_DRIVERS[scheme]:
        return f"an async driver: use {hint}... (fleet talks to the database with asyncio)"
    return None


def _cron_period(v: Any) -> str | None:
    for unit, whole in ((1, 60), (60, 3600), (3600, 86400)):
        if 0 < v <= whole and v % unit == 0 and whole % v == 0:
            return None
    return "a divisor of a minute, an hour or a day, in seconds (e.g. 30, 600, 3600, 86400)"


_BUCKET = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"


def _bucket_name(v: str | None) -> str | None:
    return None if v is None or re.fullmatch(_BUCKET, v) else "an S3 bucket name"


_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "redis_url": _redis_url,
    "database_url": _database_url,
    "iqdb_url": _url("http", "https"),
    "storage_url": lambda v: (
        None
        if v is None or v == "r2://" or re.fullmatch(rf"s3://{_BUCKET}/?", v)
        else "s3://BUCKET (an S3 bucket name), r2:// (the board's two buckets), "
        "or unset for the folder STORAGE_PATH"
    ),
    "r2_public_bucket": lambda v: _bucket_name(v),
    "r2_private_bucket": lambda v: _bucket_name(v),
    "r2_endpoint": _url("http", "https"),
    "namespace": lambda v: None if re.fullmatch(r"[A-Za-z0-9_.-]+", v) else "letters, digits, '_', '.', '-'",
    "thumb_format": lambda v: None if v in FORMAT_OF_EXT else "one of webp, jpeg (or jpg), png, gif, avif",
    "thumb_quality": _at_least(1, 100),
    "thumb_effort": _at_least(0, 6),
    "render_backend": _one_of("cpu", "gpu"),
    "gpu_fallback": _one_of("refuse", "cpu"),
    "gpu_device": lambda v: None if v == "cpu" or v.isdigit() else "a CUDA device index (0, 1, ...) or cpu",
    "variant_quality": _at_least(1, 100),
    "max_tries": _at_least(1),
    "admin_action_retention_days": _at_least(1),
    "review_every_s": _cron_period,
    "review_quorum": _at_least(1),
    "metrics_port": _at_least(0, 65535),
    "enqueue_wait_s": _at_least(0.01, 4.0),  # under a client's 5 s socket timeout
    "web_port": _at_least(1, 65535),
    "web_host": lambda v: None if v.strip() else "a host name or address, e.g. 127.0.0.1 or 0.0.0.0",
    "log_format": _one_of("auto", "console", "json"),
    "log_level": lambda v: (
        None
        if v.upper() in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
        else "one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
    ),
}
_SECRETS = {"r2_access_key_id", "r2_secret_access_key"}
_POSITIVE = {
    "thumb_width", "thumb_height", "medium_edge", "large_edge", "max_pixels", "render_timeout_s",
    "render_recycle_after", "gpu_batch_size", "gpu_batch_wait_ms", "gpu_max_pixels",
    "bulk_batch_size", "bulk_max_queued", "bulk_max_jobs", "bulk_run_ttl_s", "light_max_jobs",
    "iqdb_timeout_s", "poll_delay_s", "lock_ttl_s", "health_interval_s", "retry_cap_s", "dead_letter_max",
    "job_expiry_s", "idle_poll_s",
}  # fmt: skip


def _check(name: str, value: Any) -> Any:
    """``value`` as the field keeps it (``jpg`` becomes ``jpeg``), or a :class:`SettingsError`."""
    if name == "thumb_format" and isinstance(value, str):
        value = FORMAT_OF_EXT.get(value.lower(), value)
    problem: str | None = None
    if name in _CHECKS:
        problem = _CHECKS[name](value)
    elif name in _POSITIVE and value <= 0:
        problem = "more than 0"
    elif isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
        problem = "0 or more"
    if problem is not None:
        error = SettingsError(
            f"setting {name.upper()}={_shown(name, value)} is not allowed: must be {problem}"
        )
        error.field_name = name  # type: ignore[attr-defined]
        raise error
    return value


def _shown(name: str, value: Any) -> str:
    """The value for an error line, with any password in a URL masked (and secrets not shown)."""
    if name in _SECRETS:
        return "'***'"
    text = str(value)
    return repr(masked_url(text) if name.endswith("_url") else text)


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
        raise SettingsError(
            f"setting {name}={raw!r} is not a valid {getattr(hint, '__name__', text)}"
        ) from None
    raise TypeError(f"setting {name}: unsupported type {text}")  # pragma: no cover - a programming error


def load_env_file(path: Path) -> None:
    """Read a ``.env`` file (the board's, say) into the environment; variables already set
    win, as they do for the board's own settings."""
    from dotenv import dotenv_values

    if not path.is_file():
        raise SettingsError(f"env file {path} does not exist")
    for name, value in dotenv_values(path).items():
        if value is not None:
            os.environ.setdefault(name, value)
    get_settings.cache_clear()


@cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings.from_env()


__all__ = [
    "SentinelUrl",
    "Settings",
    "SettingsError",
    "env_names",
    "get_settings",
    "load_env_file",
    "masked_url",
    "parse_sentinel_url",
    "split_credentials",
]
