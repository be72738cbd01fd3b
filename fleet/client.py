"""The typed client the web API uses to queue work.

One method per job, each going through a :class:`JobSpec` of the registry, so the API cannot
queue a job name no worker registers. Any failure to queue raises :class:`EnqueueError`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any

from arq.connections import ArqRedis
from arq.jobs import Job
from redis.exceptions import RedisError

from fleet import coalesce, serializer, wake
from fleet.connections import DEFAULT_REDIS_URL, lazy_pool, open_pool
from fleet.errors import EnqueueError, FleetError, PayloadTooLargeError
from fleet.keys import queue_key
from fleet.logging import get_logger
from fleet.registry import (
    DELETE_FROM_IQDB,
    INDEX_IQDB,
    RECALCULATE_RATING,
    RENDER_UPLOAD,
    WRITE_VARIANT_FLAGS,
    ImageRef,
    IqdbIndex,
    JobSpec,
    P,
    Queue,
    RenderUpload,
    VariantFlags,
)
from fleet.services import with_redis_default
from fleet.settings import Settings, get_settings, masked_url

_REDIS_FAILURES = (RedisError, OSError, asyncio.TimeoutError)
log = get_logger("fleet.client")


class FleetClient:
    """Queues fleet's jobs on one Redis, and finds them again by id.

    Make one with :meth:`connect` (connects now) or :meth:`create` (connects at the first
    enqueue: a web process must start while Redis is down); a worker's jobs find one in
    ``ctx["fleet"]``. Each job method returns arq's ``Job`` (``job_id``, ``status()``,
    ``result()``); :meth:`job` finds one again from its id alone. Every failure to queue raises
    :class:`EnqueueError`, never a silent None (a coalesced job already waiting is the one None)."""

    def __init__(self, redis: ArqRedis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings

    @classmethod
    async def connect(cls, settings: Settings | None = None) -> FleetClient:
        settings = _with_redis(settings or get_settings())
        try:
            redis = await open_pool(settings)
        except _REDIS_FAILURES as exc:
            raise EnqueueError(f"cannot reach Redis at {redis_url_shown(settings)}: {exc}") from exc
        return cls(redis, settings)

    @classmethod
    def create(cls, settings: Settings | None = None) -> FleetClient:
        """A client that connects on its first enqueue: for a web process, which must start
        (and answer 503 on uploads) while Redis is down."""
        settings = _with_redis(settings or get_settings())
        return cls(lazy_pool(settings), settings)

    @property
    def where(self) -> str:
        """The Redis this client uses, password masked: every command says which it read."""
        return redis_url_shown(self.settings)

    async def close(self) -> None:
        await self.redis.aclose()

    async def __aenter__(self) -> FleetClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def job(self, job_id: str) -> Job:
        """The job ``job_id`` queued through fleet, on whichever queue holds it: its
        ``status()`` (queued, deferred, in progress, complete, not found) and ``result()`` (a
        failure raises :class:`~fleet.errors.JobFailedError`). One round trip to find the
        queue; a job no queue holds (finished, or unknown) needs none to be read."""
        names = [queue_key(self.settings.namespace, queue) for queue in Queue]
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zscore(name, job_id)
            scores = await pipe.execute()
        queue_name = next((n for n, score in zip(names, scores, strict=True) if score is not None), names[0])
        return self._job(job_id, queue_name)

    def _job(self, job_id: str, queue_name: str) -> Job:
        return Job(job_id, self.redis, _queue_name=queue_name, _deserializer=self.redis.job_deserializer)

    # --- one method per job -------------------------------------------------------------

    async def render_upload(self, image_id: int, filename: str, ext: str, status: int | None = None) -> Job:
        """Render thumbnail (and medium/large when the original is big enough) for an upload.
        ``status`` (the image's) chooses the board's public or private bucket; None: public."""
        upload = RenderUpload(image_id=image_id, filename=filename, ext=ext, status=status)
        return await self.enqueue(RENDER_UPLOAD, upload)

    async def recalculate_rating(self, image_id: int) -> Job | None:
        """Recompute an image's rating after a vote. Coalesced: returns None when a
        recalculation of this image is already waiting (it will see this vote)."""
        return await self.enqueue_coalesced(RECALCULATE_RATING, ImageRef(image_id))

    async def write_variant_flags(
        self, image_id: int, medium: int, large: int, r2_location: int | None = None
    ) -> Job:
        return await self.enqueue(WRITE_VARIANT_FLAGS, VariantFlags(image_id, medium, large, r2_location))

    async def index_iqdb(self, image_id: int, path: str) -> Job:
        """Index the JPEG at ``path`` (relative to the storage root) in IQDB."""
        return await self.enqueue(INDEX_IQDB, IqdbIndex(image_id, path))

    async def delete_from_iqdb(self, image_id: int) -> Job:
        return await self.enqueue(DELETE_FROM_IQDB, ImageRef(image_id))

    # --- the one way to queue -----------------------------------------------------------

    async def enqueue(
        self, spec: JobSpec[P], payload: P, *, job_id: str | None = None, defer_s: float | None = None
    ) -> Job:
        """Queue ``payload`` for ``spec``; raises :class:`EnqueueError`, never returns silently
        (:class:`PayloadTooLargeError` for a payload no worker would accept). The job expires
        JOB_EXPIRY_S after it is due.

        Idempotent by ``job_id``: while a job with that id (or its result) is kept, queueing it
        again queues nothing and returns it. So an enqueue that failed, behind Sentinel perhaps
        in a failover, is made safe by queueing again with the same id: once it returns, a
        replica holds the job."""
        data = _checked(spec, payload)
        queue_name = queue_key(self.settings.namespace, spec.queue)
        # Our own id, not arq's: a transaction that ran but whose reply was lost (Redis restarting)
        # is retried by redis-py, finds the job there, and still returns it.
        job_id = job_id or uuid.uuid4().hex
        try:
            job = await self.redis.enqueue_job(
                spec.name,
                data,
                _queue_name=queue_name,
                _job_id=job_id,
                _defer_by=defer_s,
                _expires=(defer_s or 0) + self.settings.job_expiry_s,
            )
        except _REDIS_FAILURES as exc:
            raise EnqueueError(f"could not queue {spec.name} on {self.where}: {exc}") from exc
        if job is None:  # the id is taken: this job, queued before (perhaps unconfirmed), or its result
            job = self._job(job_id, queue_name)
        await self._wake(queue_name, f"{spec.name} {job.job_id}")
        return job

    async def _wake(self, queue_name: str, what: str) -> None:
        """Wake an idle worker of the queue; behind Sentinel, return only once ENQUEUE_REPLICAS
        replicas hold the job (EnqueueError if not within ENQUEUE_WAIT_S), so no failover loses
        an enqueue that returned. Otherwise the job is queued already: if the token cannot be
        pushed, it is not lost, only started by the idle workers' next poll (IDLE_POLL_S)."""
        replicas = self.settings.confirm_replicas
        try:
            held = await wake.nudge(self.redis, queue_name, replicas, self.settings.enqueue_wait_s)
        except _REDIS_FAILURES as exc:
            if replicas:
                raise EnqueueError(
                    f"{what}: queued, but not confirmed on a replica of {self.where} ({exc}): it may "
                    "be lost in a failover; queue it again with the same job_id"
                ) from exc
            log.warning("wake_failed", queue=queue_name, error_type=type(exc).__name__, error=str(exc))
            return
        if held < replicas:
            raise EnqueueError(
                f"{what}: queued on the primary of {self.where}, but {held} of {replicas} replicas "
                f"held it after {self.settings.enqueue_wait_s:g} s (ENQUEUE_REPLICAS, ENQUEUE_WAIT_S): "
                "it may be lost in a failover; queue it again with the same job_id"
            )

    async def enqueue_coalesced(self, spec: JobSpec[P], payload: P) -> Job | None:
        """Queue unless an identical job is already waiting (see :mod:`fleet.coalesce`)."""
        if not spec.coalesce:
            raise TypeError(f"{spec.name} is not a coalesced job")
        job_id = uuid.uuid4().hex
        queue_name = queue_key(self.settings.namespace, spec.queue)
        try:
            queued = await coalesce.enqueue_once(
                self.redis,
                spec.coalesce_key(self.settings.namespace, payload),
                queue_name,
                job_id,
                spec.name,
                _checked(spec, payload),
                expires_ms=self.settings.job_expiry_s * 1000,
            )
        except _REDIS_FAILURES as exc:
            raise EnqueueError(f"could not queue {spec.name} on {self.where}: {exc}") from exc
        if not queued:
            return None
        if self.settings.confirm_replicas:  # the script pushed its wake token: this one only confirms
            await self._wake(queue_name, f"{spec.name} {job_id}")
        return self._job(job_id, queue_name)


def _with_redis(settings: Settings) -> Settings:
    try:
        return with_redis_default(settings)
    except FleetError as exc:
        raise EnqueueError(str(exc)) from None


def redis_url_shown(settings: Settings) -> str:
    """The Redis URL without its password, for messages."""
    return masked_url(settings.redis_url or DEFAULT_REDIS_URL)


def _checked(spec: JobSpec[P], payload: P) -> dict[str, Any]:
    """The encoded payload, refused here when it is too big for a worker to accept."""
    data = spec.encode(payload)
    if problem := serializer.payload_problem([data]):
        raise PayloadTooLargeError(f"{spec.name}: payload refused: {problem}")
    return data


def lifespan(
    settings: Settings | None = None,
) -> Callable[[Any], AbstractAsyncContextManager[dict[str, FleetClient]]]:
    """A FastAPI/Starlette ``lifespan``: one client for the app's life, closed at shutdown.

    The client is on ``app.state.fleet`` and in the lifespan state as ``request.state.fleet``.
    It connects lazily: the app starts while Redis is down, and each enqueue raises
    :class:`EnqueueError` (answer 503) until Redis is back.
    """

    @asynccontextmanager
    async def run(app: Any) -> AsyncIterator[dict[str, FleetClient]]:
        client = FleetClient.create(settings)
        app.state.fleet = client
        try:
            yield {"fleet": client}
        finally:
            await client.close()

    return run
