"""Every queue and every job of the fleet, in one place.

The client enqueues only through a :class:`JobSpec` from this module, and a worker is built
from the specs of its queue (see :func:`fleet.worker.build_worker`), which refuses to start
unless it registers every one of them. A job name the worker does not know cannot be queued.

Payloads are small frozen dataclasses of ids and stored names: never pixels, never paths.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from fleet.errors import InvalidPayloadError
from fleet.keys import pending_key


class Queue(enum.StrEnum):
    """Queues, each served by its own worker kind and scaled on its own."""

    IMG = "img"
    """Uploads: rendered first."""
    IMG_BULK = "img-bulk"
    """Archive re-rendering: served only when IMG is empty."""
    IQDB = "iqdb"
    DB = "db"


class Payload(Protocol):
    __dataclass_fields__: ClassVar[dict[str, Any]]


P = TypeVar("P", bound=Payload)


@dataclass(frozen=True, slots=True)
class JobSpec(Generic[P]):
    """A job's name, its queue and the shape of its arguments."""

    name: str
    queue: Queue
    payload: type[P]
    coalesce: bool = False
    """At most one queued job per payload: enqueueing an identical one while it waits is a
    no-op. The job releases its slot when it starts, so work arriving while it runs queues
    one more."""

    def coalesce_key(self, namespace: str, payload: P) -> str:
        values = ":".join(str(v) for v in dataclasses.asdict(payload).values())
        return pending_key(namespace, self.name, values)

    def encode(self, payload: P) -> dict[str, Any]:
        """The payload's fields, less optional ones left at None: a job that does not use a
        newer field (``RenderUpload.status``) is still accepted by a worker one release older,
        which refuses unknown fields, during a rolling upgrade."""
        if not isinstance(payload, self.payload):
            raise TypeError(f"{self.name} takes a {self.payload.__name__}, not {type(payload).__name__}")
        data = dataclasses.asdict(payload)
        return {
            f.name: data[f.name]
            for f in dataclasses.fields(payload)
            if not (f.default is None and data[f.name] is None)
        }

    def decode(self, data: Any) -> P:
        """Rebuild the payload, refusing anything that does not match its declared types."""
        if not isinstance(data, dict):
            raise InvalidPayloadError(f"{self.name}: payload must be an object, got {type(data).__name__}")
        hints = typing.get_type_hints(self.payload)
        names = {f.name for f in dataclasses.fields(self.payload)}
        if unknown := set(data) - names:
            raise InvalidPayloadError(f"{self.name}: unknown fields {sorted(unknown)}")
        values: dict[str, Any] = {}
        for f in dataclasses.fields(self.payload):
            if f.name not in data:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise InvalidPayloadError(f"{self.name}: missing field {f.name!r}")
                continue
            values[f.name] = _check(self.name, f.name, data[f.name], hints[f.name])
        _check_ids(self.name, values)
        return self.payload(**values)


MAX_IMAGE_ID = 2**31 - 1
"""The board's ids are INT UNSIGNED, but real ones stay below 2^31: a larger id in a payload is
hostile or a bug (one would make a bulk run's bitmap as long as the id)."""


def _check_ids(job: str, values: dict[str, Any]) -> None:
    """Image ids (``image_id``, ``image_ids``) must be within 0..MAX_IMAGE_ID."""
    ids = [values["image_id"]] if "image_id" in values else list(values.get("image_ids", ()))
    if bad := [i for i in ids if not 0 <= i <= MAX_IMAGE_ID]:
        raise InvalidPayloadError(f"{job}: image id {bad[0]} is outside 0..{MAX_IMAGE_ID}")


def _check(job: str, name: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _check(job, name, value, option)
            except InvalidPayloadError:
                continue
        raise InvalidPayloadError(f"{job}: field {name!r} has the wrong type {type(value).__name__}")
    if hint is type(None):
        if value is None:
            return None
    elif origin in (list, tuple):
        (item,) = typing.get_args(hint)[:1]
        if isinstance(value, list):
            items = [_check(job, name, v, item) for v in value]
            return items if origin is list else tuple(items)
    elif hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    elif (hint is int and isinstance(value, int) and not isinstance(value, bool)) or (
        hint in (str, bool) and type(value) is hint
    ):
        return value
    raise InvalidPayloadError(
        f"{job}: field {name!r} must be {getattr(hint, '__name__', hint)}, got {value!r}"
    )


# --- payloads -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RenderUpload:
    """Render the variants of one stored original, ``fullsize/{filename}.{ext}``."""

    image_id: int
    filename: str
    ext: str
    status: int | None = None
    """The image's status: with the board's two buckets it chooses one (None: public)."""


@dataclass(frozen=True, slots=True)
class VariantFlags:
    """``images.medium`` / ``images.large`` as a render found them (0 NONE, 1 READY)."""

    image_id: int
    medium: int
    large: int
    r2_location: int | None = None
    """``images.r2_location`` once every output is in the board's bucket (1 public, 2 private);
    None leaves it as it is."""


@dataclass(frozen=True, slots=True)
class IqdbIndex:
    """Index the JPEG rendition at ``path`` (relative to the storage root) under ``image_id``."""

    image_id: int
    path: str


@dataclass(frozen=True, slots=True)
class ImageRef:
    image_id: int


@dataclass(frozen=True, slots=True)
class RenderBatch:
    """Re-render K stored originals for the bulk run ``run_id`` (parallel lists, one per image).

    ``image_ids`` are the board's ids, or positions in a folder listing (then no flags or
    IQDB follow). ``variants`` limits what is rendered (empty: all)."""

    run_id: str
    image_ids: list[int]
    filenames: list[str]
    exts: list[str]
    variants: list[str]
    mode: str = "stale"
    """stale: skip originals whose outputs are current for the current settings; missing: skip
    those whose outputs exist at all; all: render everything."""
    reindex: str = "changed"
    """IQDB after a re-render: "changed" (only when the thumbnail's bytes changed), "always", "never"."""
    with_db: bool = True
    """Whether ids are board ids (flags and IQDB follow) or folder positions."""
    attempt: int = 1
    fingerprint: str = ""
    """The feeder's ``RenderSettings.fingerprint()``: a worker rendering with other settings refuses the
    batch for good instead of skipping its images as current ("": not checked)."""
    public: list[bool] | None = None
    """With the board's two buckets (STORAGE_URL=r2://), whether each image is in the public
    one (its status says, or the bucket it was listed in); None: all in the one storage."""


# --- jobs ---------------------------------------------------------------------------------

RENDER_UPLOAD: JobSpec[RenderUpload] = JobSpec("render_upload", Queue.IMG, RenderUpload)
RENDER_BATCH: JobSpec[RenderBatch] = JobSpec("render_batch", Queue.IMG_BULK, RenderBatch)
WRITE_VARIANT_FLAGS: JobSpec[VariantFlags] = JobSpec("write_variant_flags", Queue.DB, VariantFlags)
RECALCULATE_RATING: JobSpec[ImageRef] = JobSpec("recalculate_rating", Queue.DB, ImageRef, coalesce=True)
INDEX_IQDB: JobSpec[IqdbIndex] = JobSpec("index_iqdb", Queue.IQDB, IqdbIndex)
DELETE_FROM_IQDB: JobSpec[ImageRef] = JobSpec("delete_from_iqdb", Queue.IQDB, ImageRef)

ALL_JOBS: tuple[JobSpec[Any], ...] = (
    RENDER_UPLOAD,
    RENDER_BATCH,
    WRITE_VARIANT_FLAGS,
    RECALCULATE_RATING,
    INDEX_IQDB,
    DELETE_FROM_IQDB,
)


def jobs_of(queue: Queue) -> tuple[JobSpec[Any], ...]:
    return tuple(spec for spec in ALL_JOBS if spec.queue is queue)


# Which worker kind serves which queues: the dotted path of a ``worker_settings(settings)``
# factory. A string, not an import: fleet never imports a worker package. Each module also
# has ``WorkerSettings`` (built from the environment) for the stock ``arq`` CLI.
WORKERS: dict[str, str] = {
    "img": "imgworker.worker.worker_settings",
    "iqdb": "ratingworker.worker.iqdb_worker_settings",
    "db": "ratingworker.worker.db_worker_settings",
}

CRON_JOBS: dict[str, str] = {
    "close_expired_reviews": "open reviews past their deadline: close by quorum, extend once, or keep",
    "prune_admin_actions": "delete audit rows older than ADMIN_ACTION_RETENTION_DAYS (daily)",
}
"""The cron jobs of the db worker, by name; ``fleet cron NAME`` runs one now through
``CRON_RUNNER`` (a dotted path, like ``WORKERS``)."""
CRON_RUNNER = "ratingworker.worker.run_cron_once"
