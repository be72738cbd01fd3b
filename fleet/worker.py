"""The queue layer both worker kinds are built from: registration, the failure model at work,
locks, the typed job context.

Every job ends one of three ways, decided by the pure rule of :mod:`fleet.failures` and acted
on here (``_adapt``: attempt, classify -> decide -> act, counted by ``metrics.JobCounts``):

- done: the handler returned;
- retried later: it raised :class:`TransientError` or ran past its timeout, with full-jitter
  exponential backoff, up to MAX_TRIES;
- dead-lettered with a reason: it raised :class:`PermanentError`, exhausted its tries, raised
  anything unexpected, or arrived as a payload no handler accepts (unknown function, not
  JSON, wrong fields).

Job code raises and never catches these (they are ``BaseException``\\ s); arq's ``Retry`` is
raised by this adapter after the job's code has ended, so nothing in a job can swallow it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Generic, TypedDict, TypeGuard, TypeVar, cast

from arq.connections import ArqRedis
from arq.cron import CronJob, cron
from arq.typing import WorkerCoroutine
from arq.worker import Function, Retry, Worker, func
from redis.exceptions import RedisError

from fleet import coalesce, metrics, serializer, wake
from fleet.client import FleetClient
from fleet.connections import connect, worker_redis_settings
from fleet.deadletters import DeadLetter, DeadLetters
from fleet.errors import JobError, JobFailedError, RegistryError
from fleet.failures import Done, Outcome, RetryLater, RetryPolicy, classify, decide, unfinished_tries
from fleet.health import Heartbeat, Outage, ReplicaStats
from fleet.keys import cron_name, health_check_key, in_progress_key, job_key, queue_key
from fleet.logging import get_logger
from fleet.registry import JobSpec, P, Queue, jobs_of
from fleet.settings import Settings

log = get_logger("fleet.worker")

ERROR_CHARS = 500
"""Error text in job events is cut here: one bad payload must not flood the logs."""
IMAGE_IDS_SHOWN = 20
"""A bulk batch's job events list at most this many of its image ids (and their count)."""
STARTED: Final = "fleet_started"
"""The ctx key holding when the job's code started (for duration_ms)."""


class Context(TypedDict, total=False):
    """What job code and hooks find in ``ctx``. arq passes a plain dict and fills it as the
    worker starts (arq's keys, then fleet's at start-up, then each job's), so no key is
    required; each worker kind extends it with its own (``ImgContext``, ``LightContext``), so
    mypy checks every key a job reads."""

    redis: ArqRedis
    job_id: str
    job_try: int
    enqueue_time: datetime
    score: int
    """The job's due time in ms (queue wait is measured from it)."""
    lock_ttl_s: float
    """Fleet's, passed through arq's ``ctx`` setting (see :func:`make_worker`)."""
    settings: Settings
    queue: Queue
    stats: ReplicaStats
    """The replica's numbers: a worker kind may report a problem there (health checks read it)."""
    fleet: FleetClient
    """For jobs that queue follow-up jobs."""
    fleet_started: float


C = TypeVar("C", bound=Context)
Hook = Callable[[C], Awaitable[None]]


def for_arq(job: Callable[..., Awaitable[Any]]) -> WorkerCoroutine:
    """A job function as arq types it: arq passes a plain dict, which our ``Context`` types
    (annotated, never wrapped)."""
    return cast(WorkerCoroutine, job)


def context_of(worker: Worker) -> Context:
    """A worker's own ``ctx`` (arq's plain dict), typed."""
    return cast(Context, worker.ctx)


QUARANTINE = "fleet:quarantine"
"""The function every unacceptable payload is rerouted to, so it is dead-lettered, never run."""
MAX_JOB_TRY = 1000
"""arq's own try bound, kept out of reach of MAX_TRIES (arq would fail a job past it with no
dead letter); a planted envelope naming a higher try is refused."""
MAX_ENQUEUE_AHEAD_MS = 366 * 24 * 3600 * 1000
"""An envelope's enqueue time may lie at most this far in the future (clock skew, not 1e300)."""
TRACEBACK_CHARS = 8192
"""A traceback in a job event (DEBUG only) is cut here."""


@dataclass(frozen=True, slots=True)
class Handler(Generic[P, C]):
    """A job function bound to the spec it implements."""

    spec: JobSpec[P]
    run: Callable[[C, P], Awaitable[Any]]


def handles(spec: JobSpec[P]) -> Callable[[Callable[[C, P], Awaitable[Any]]], Handler[P, C]]:
    """Decorator: ``@handles(RENDER_UPLOAD)`` marks a coroutine as the worker side of a spec."""

    def bind(run: Callable[[C, P], Awaitable[Any]]) -> Handler[P, C]:
        return Handler(spec, run)

    return bind


def job_try(ctx: Context) -> int:
    """This run's try number (1 for a context made by hand)."""
    return int(ctx.get("job_try", 1))


def image_fields(data: Any) -> dict[str, Any]:
    """The board's image id(s) a raw payload names, for job events: ``image_id``, or for a bulk
    batch ``image_ids`` (at most IMAGE_IDS_SHOWN) and ``images`` (how many)."""
    if not isinstance(data, dict):
        return {}
    if isinstance(data.get("image_id"), int):
        return {"image_id": data["image_id"]}
    ids = data.get("image_ids")
    if not isinstance(ids, list):
        return {}
    if len(ids) == 1:
        return {"image_id": ids[0]}
    return {"image_ids": ids[:IMAGE_IDS_SHOWN], "images": len(ids)}


def job_fields(ctx: Context, job: str, data: Any) -> dict[str, Any]:
    """What every job event carries: which job, where, which try, which image(s). Names come
    from payloads, so their control characters are escaped."""
    fields: dict[str, Any] = {
        "job": serializer.printable(job),
        "queue": ctx["queue"].value,
        "job_id": serializer.printable(ctx["job_id"]),
        "try": job_try(ctx),
        **image_fields(data),
    }
    if STARTED in ctx:
        fields["duration_ms"] = round((time.perf_counter() - ctx[STARTED]) * 1000, 1)
    return fields


def error_fields(error_type: str, message: str, cause: BaseException | None = None) -> dict[str, Any]:
    """``error_type`` and ``error`` (cut at ERROR_CHARS, control characters escaped); the
    traceback only at DEBUG."""
    fields: dict[str, Any] = {
        "error_type": serializer.printable(error_type[:ERROR_CHARS]),
        "error": serializer.printable(message[:ERROR_CHARS]),
    }
    if cause is not None and logging.getLogger("fleet.worker").isEnabledFor(logging.DEBUG):
        fields["traceback"] = serializer.cut("".join(traceback.format_exception(cause)), TRACEBACK_CHARS)
    return fields


async def dead_letter(
    ctx: Context,
    function: str,
    args: list[Any],
    error_type: str,
    message: str,
    letter_id: str | None = None,
    cause: BaseException | None = None,
) -> JobFailedError:
    """Record the failure, log ``job_dead_lettered``, and return the error arq stores as the
    job's result.

    ``letter_id`` (default: the job id) tells apart several letters of one job: a bulk job
    dead-letters each image that failed for good, and finishes the rest; its event names that
    image (``args`` holds the one-image payload)."""
    letters = DeadLetters.of(ctx["redis"], ctx["settings"])
    message = serializer.cut(message)
    letter = DeadLetter(
        job_id=letter_id or ctx["job_id"],
        queue=ctx["queue"].value,
        function=serializer.cut(function, ERROR_CHARS),
        args=args,
        error_type=serializer.cut(error_type, ERROR_CHARS),
        message=message,
        tries=job_try(ctx),
        failed_at=time.time(),
    )
    await letters.add(letter)
    # Counted here, not per job: a bulk batch dead-letters its failed images one by one.
    metrics.JOBS_DEAD_LETTERED.labels(letter.queue, function).inc()
    fields = job_fields(ctx, function, args[0] if len(args) == 1 else None)
    if letter.job_id != fields["job_id"]:
        fields["letter_id"] = letter.job_id
    log.error("job_dead_lettered", **fields, **error_fields(error_type, message, cause))
    return JobFailedError(error_type, message)


# --- the failure rule at work: attempt, classify -> decide -> act (the rule: fleet.failures) ---


async def _attempt(run: Awaitable[Any], timeout_s: float | None = None) -> tuple[Any, JobError | None]:
    """Run the job's code: its result, or what it raised, classified (``timeout_s``: it ran
    under that timeout). arq's ``Retry`` passes through."""
    try:
        return await run, None
    except Retry:
        raise
    except (JobError, Exception) as exc:  # noqa: BLE001 - not swallowed: classified, then ended
        return None, classify(exc, timeout_s=timeout_s)


async def _act(
    ctx: Context, job: str, args: list[Any], failure: JobError | None, outcome: Outcome
) -> BaseException | None:
    """Log the outcome and write its dead letter; returns the exception to raise to arq (its
    ``Retry``, or the failure it stores as the result), None when done."""
    fields = job_fields(ctx, job, args[0] if args else None)
    if isinstance(outcome, Done):
        log.info("job_finished", **fields)
        return None
    if isinstance(outcome, RetryLater):
        retry = Retry(defer=outcome.delay_s())
        failed = error_fields(failure.error_type, str(failure), failure) if failure else {}
        log.warning("job_retried", **fields, retry_in_ms=retry.defer_score, **failed)
        return retry
    return await dead_letter(ctx, job, args, outcome.error_type, outcome.message, cause=failure)


def _adapt(
    handler: Handler[Any, Any], settings: Settings, timeout_s: float, locks: LockKeeper, stats: ReplicaStats
) -> Function:
    """The arq function around a handler: the payload decoded, the failure rule applied, the
    run counted; ``timeout_s`` is ours (arq's is kept behind it: an arq timeout fails a job
    for good)."""
    spec = handler.spec
    policy = RetryPolicy.of(settings)

    async def run(ctx: Context, data: Any) -> Any:
        payload = spec.decode(data)
        if overdue := unfinished_tries(job_try(ctx), settings.max_tries):
            raise overdue
        if spec.coalesce:
            await coalesce.release(
                ctx["redis"], spec.coalesce_key(settings.namespace, payload), ctx["job_id"]
            )
        async with asyncio.timeout(timeout_s):
            return await handler.run(ctx, payload)

    async def run_job(ctx: Context, data: Any = None) -> Any:
        counts = metrics.JobCounts(stats, ctx["queue"], spec.name)
        counts.started(ctx.get("score", 0))
        log.info("job_started", **job_fields(ctx, spec.name, data))
        ctx[STARTED] = time.perf_counter()
        async with locks.hold(ctx):
            with counts.timed():
                result, failure = await _attempt(run(ctx, data), timeout_s)
                outcome = decide(failure, job_try(ctx), policy)
                ending = await _act(ctx, spec.name, [data], failure, outcome)
        await counts.ended(outcome, ctx["redis"], settings.namespace)
        if ending is not None:
            raise ending from failure
        return result

    run_job.__qualname__ = run_job.__name__ = spec.name
    # arq would fail a job past its own max_tries without us: keep that bound out of reach.
    return func(for_arq(run_job), name=spec.name, max_tries=MAX_JOB_TRY, timeout=timeout_s + 10)


def fleet_cron(
    run: Callable[[C], Awaitable[Any]], *, name: str, settings: Settings, period_s: int, **schedule: Any
) -> CronJob:
    """An arq cron job under the same failure model as every other job.

    arq runs cron functions without our adapter, and a :class:`JobError` (a ``BaseException``)
    escaping one would kill the job task unrecorded: here a transient failure is retried
    with backoff and a permanent one is dead-lettered with its reason. ``unique``: every
    replica offers the run of a slot under one job id, so it runs once; the result is kept for
    two periods, so a replica that comes late to a slot cannot run it again."""
    policy = RetryPolicy.of(settings)

    async def run_cron(ctx: C) -> Any:
        log.info("job_started", **job_fields(ctx, name, None))
        ctx[STARTED] = time.perf_counter()
        result, failure = await _attempt(run(ctx))
        ending = await _act(ctx, name, [], failure, decide(failure, job_try(ctx), policy))
        if ending is not None:
            raise ending from failure
        return result

    run_cron.__qualname__ = run_cron.__name__ = name
    return cron(
        for_arq(run_cron),
        name=cron_name(settings.namespace, name),
        unique=True,
        max_tries=MAX_JOB_TRY,
        keep_result=max(settings.keep_result_s, 2 * period_s),
        **schedule,
    )


async def _quarantine(ctx: Context, problem: dict[str, Any]) -> None:
    raise await dead_letter(ctx, str(problem["function"]), [problem["raw"]], "InvalidJob", problem["reason"])


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def envelope_problem(job: dict[str, Any], arity: dict[str, int], now_ms: int) -> str | None:
    """Why arq must not be handed this job document (None if it may): every field arq reads
    is checked here, because a wrong type in any of them raises inside arq, outside any job,
    and would end the worker (``f`` function, ``a`` args, ``k`` kwargs, ``t`` try, ``et``
    enqueue time in ms)."""
    function = job.get("f")
    if not isinstance(function, str) or function not in arity:
        return f"no function {function!r} on this queue"
    args, kwargs, job_try, enqueued = job.get("a"), job.get("k", ...), job.get("t", ...), job.get("et")
    if not isinstance(args, list):
        return "arguments are not a list"
    if len(args) > arity[function]:
        return f"{function} takes {arity[function]} argument(s), got {len(args)}"
    if kwargs != {}:
        return "fleet jobs take no keyword arguments: 'k' must be an empty object"
    if job_try is ... or not (job_try is None or (_is_int(job_try) and 0 <= job_try <= MAX_JOB_TRY)):
        return f"the try number must be empty or an integer from 0 to {MAX_JOB_TRY}"
    if not (_is_int(enqueued) and 0 <= enqueued <= now_ms + MAX_ENQUEUE_AHEAD_MS):
        return "the enqueue time must be an integer of milliseconds, not in the far future"
    return serializer.payload_problem(args, raw_size=0)  # the document's size is checked first


def quarantining_deserializer(arity: dict[str, int]) -> Callable[[bytes], dict[str, Any]]:
    """arq's job deserializer, rerouting payloads no handler accepts to the quarantine job.

    ``arity``: the most positional arguments each function of the queue takes (jobs one,
    crons none); the quarantine job itself is never accepted from Redis."""

    def deserialize(raw: bytes) -> dict[str, Any]:
        now_ms = int(time.time() * 1000)
        function: Any = None
        if len(raw) > serializer.MAX_PAYLOAD_BYTES:
            reason: str | None = serializer.payload_problem(None, raw_size=len(raw))
        else:
            try:
                job = serializer.deserialize(raw)
                function = job.get("f")
                reason = envelope_problem(job, arity, now_ms)
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                reason = f"not a JSON job: {exc}"
        if reason is None:
            return job
        shown = function if isinstance(function, str) else repr(function)
        problem = {"function": shown[:200], "raw": raw[:2000].decode(errors="replace"), "reason": reason}
        return {"f": QUARANTINE, "a": [problem], "k": {}, "t": None, "et": now_ms}

    return deserialize


class LockKeeper:
    """Short, renewed job locks, so a killed worker's jobs run again within LOCK_TTL_S.

    arq locks a running job for its whole timeout plus 10 s: a SIGKILLed render would wait
    minutes. Here each lock is cut to LOCK_TTL_S when its job starts and renewed every third
    of that while the job runs; when the worker dies, renewals stop and the job is free."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_ms = int(ttl_s * 1000)
        self.running: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def hold(self, ctx: Context) -> AsyncIterator[None]:
        """Around a job: cut its lock to the short TTL and keep renewing it until it ends."""
        job_id = ctx["job_id"]
        self.running.add(job_id)
        try:
            await ctx["redis"].pexpire(in_progress_key(job_id), self.ttl_ms)
            yield
        finally:
            self.running.discard(job_id)

    def start(self, ctx: Context) -> None:
        self._task = asyncio.create_task(self._renew(ctx))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _renew(self, ctx: Context) -> None:
        outage = Outage("job_locks")
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            if self.running:
                try:
                    async with ctx["redis"].pipeline(transaction=False) as pipe:
                        for job_id in list(self.running):
                            pipe.pexpire(in_progress_key(job_id), self.ttl_ms)
                        await pipe.execute()
                except (RedisError, OSError) as exc:  # Redis away, however long: the next round tries again
                    outage.failed(exc)
                else:
                    outage.ended()


def check_handlers(queue: Queue, handlers: Sequence[Handler[Any, Any]]) -> None:
    """Refuse a worker whose handlers are not exactly the registry's jobs for ``queue``."""
    expected = {spec.name for spec in jobs_of(queue)}
    given = [h.spec.name for h in handlers]
    if strays := [h.spec.name for h in handlers if h.spec.queue is not queue]:
        raise RegistryError(f"worker for {queue} given jobs of other queues: {strays}")
    if missing := expected - set(given):
        raise RegistryError(f"worker for {queue} does not register {sorted(missing)}")
    if len(given) != len(set(given)):
        raise RegistryError(f"worker for {queue} registers a job twice: {given}")


@dataclass(frozen=True, slots=True)
class Lifecycle(Generic[C]):
    """A replica's start and stop around the worker kind's own hooks: fleet's keys in ``ctx``,
    job locks, metrics, and the heartbeat (beating only once the replica can serve)."""

    queue: Queue
    settings: Settings
    locks: LockKeeper
    heartbeat: Heartbeat
    on_startup: Hook[C] | None = None
    on_shutdown: Hook[C] | None = None

    async def startup(self, ctx: C) -> None:
        ctx["settings"] = self.settings
        ctx["queue"] = self.queue
        ctx["stats"] = self.heartbeat.stats
        ctx["fleet"] = FleetClient(ctx["redis"], self.settings)
        self.locks.start(ctx)
        if self.on_startup is not None:
            await self.on_startup(ctx)
        metrics.serve(self.settings.metrics_port, self.settings.metrics_host)
        metrics.start_refreshing(ctx["redis"], self.settings)
        self.heartbeat.start(ctx["redis"])

    async def shutdown(self, ctx: C) -> None:
        await metrics.stop_refreshing()
        await self.heartbeat.stop(ctx["redis"])
        await self.locks.stop()
        if self.on_shutdown is not None:
            await self.on_shutdown(ctx)


def build_worker(
    queue: Queue,
    handlers: Sequence[Handler[Any, C]],
    settings: Settings,
    *,
    on_startup: Hook[C] | None = None,
    on_shutdown: Hook[C] | None = None,
    max_jobs: int = 10,
    job_timeout_s: float = 300,
    cron_jobs: Sequence[CronJob] = (),
) -> dict[str, Any]:
    """arq worker settings for ``queue`` (a dict the stock ``arq`` CLI accepts).

    Refuses to build unless ``handlers`` covers exactly the registry's jobs for ``queue``.
    """
    check_handlers(queue, handlers)
    locks = LockKeeper(settings.lock_ttl_s)
    stats = ReplicaStats(running=locks.running)
    life = Lifecycle(queue, settings, locks, Heartbeat(settings, queue, stats), on_startup, on_shutdown)
    name = queue_key(settings.namespace, queue)
    functions = [_adapt(h, settings, job_timeout_s, locks, stats) for h in handlers]
    arity = {f.name: 1 for f in functions} | {c.name: 0 for c in cron_jobs}
    functions.append(func(for_arq(_quarantine), name=QUARANTINE, max_tries=MAX_JOB_TRY))
    return {
        "functions": functions,
        "queue_name": name,
        "health_check_key": health_check_key(name),
        "redis_settings": worker_redis_settings(settings),
        "job_serializer": serializer.serialize,
        "job_deserializer": quarantining_deserializer(arity),
        "cron_jobs": list(cron_jobs),
        "on_startup": life.startup,
        "on_shutdown": life.shutdown,
        "max_jobs": max_jobs,
        "poll_delay": settings.poll_delay_s,
        "job_timeout": job_timeout_s + 10,
        "keep_result": settings.keep_result_s,
        "max_tries": MAX_JOB_TRY,
        # arq's own health key (read by `arq --check`) every minute: fleet's per-replica
        # heartbeats are what `fleet health` reads, and idle replicas should cost Redis little.
        "health_check_interval": 60,
        "job_completion_wait": settings.drain_grace_s,
        "ctx": {"lock_ttl_s": settings.lock_ttl_s},
    }


class FleetWorker(Worker):
    """arq's worker, riding out Redis outages instead of dying of them.

    redis-py retries single commands (see ``worker_redis_settings``) but not pipelines, and
    arq polls, starts and finishes jobs through pipelines: one failing during a Redis restart
    would end arq's main loop, and the worker with it. Here a failed poll is logged and tried
    again; a job whose start or finish was cut off keeps its lock for LOCK_TTL_S and runs
    again (every job is idempotent)."""

    _waiter: wake.Waiter | None = None
    _next_due: float | None = None
    """When (monotonic) the earliest deferred job is due, as last read; None: read it again."""
    _crons_due: tuple[Any, ...] = ()
    _saw_due = False
    """The last poll saw jobs due that ran elsewhere: one may be a killed worker's."""

    async def main(self) -> None:
        """arq's, on a pool fleet opens: behind Sentinel it keeps the retry policy arq's drops."""
        if self._pool is None and self.redis_settings is not None:
            self._pool = await connect(
                self.redis_settings,
                job_serializer=self.job_serializer,
                job_deserializer=self.job_deserializer,
                default_queue_name=self.queue_name,
                expires_extra_ms=self.expires_extra_ms,
            )
        await super().main()

    async def _poll_iteration(self) -> None:
        """arq's poll, then, when it found the worker idle, a wait for a wake token (see
        :mod:`fleet.wake`): arq's own sleep of ``poll_delay`` follows, so a busy worker polls
        as often as before."""
        started = self._jobs_started()
        try:
            await super()._poll_iteration()
        except (RedisError, OSError) as exc:
            log.warning("redis_unavailable_polling", error_type=type(exc).__name__, error=str(exc))
            await asyncio.sleep(1.0)
        except Exception as exc:  # noqa: BLE001 - one job's start must never end the worker
            log.error(
                "poll_failed", error_type=type(exc).__name__, error=serializer.cut(str(exc), ERROR_CHARS)
            )
            await asyncio.sleep(1.0)
        else:
            if self.job_counter == 0 and self._jobs_started() == started and not self.burst:
                await self._wait_while_idle()
            else:
                self._next_due = None  # jobs ran: one may have been retried for later

    async def _wait_while_idle(self) -> None:
        """Wait for a wake token, at most IDLE_POLL_S and never past the next deferred job's
        due time or the next cron run; Redis away: the next poll reports it."""
        settings = context_of(self).get("settings")
        if settings is None or not settings.wake_on_enqueue or self.redis_settings is None:
            return
        if self._waiter is None:
            self._waiter = wake.Waiter(self.redis_settings, self.queue_name)
        try:
            timeout_s = min(settings.idle_poll_s, await self._next_due_in_s(), self._next_cron_in_s())
            if self._saw_due:  # its lock runs out within LOCK_TTL_S: catch it about as soon
                timeout_s = min(timeout_s, settings.lock_ttl_s / 3)
            if await self._waiter.wait(timeout_s):
                self._next_due = None  # a job was queued, perhaps deferred
        except (RedisError, OSError) as exc:
            log.warning("redis_unavailable_polling", error_type=type(exc).__name__, error=str(exc))
            await asyncio.sleep(1.0)

    async def _next_due_in_s(self) -> float:
        """Seconds to the next deferred job, read again only when something may have changed
        it (a token, a job run, a cron queued, the last one due): an idle wait costs one BLPOP
        and one poll."""
        crons = tuple(c.next_run for c in self.cron_jobs)
        now = time.monotonic()
        if self._next_due is None or self._next_due <= now or crons != self._crons_due:
            self._crons_due = crons
            self._next_due = now + await wake.next_due_in_s(self.pool, self.queue_name)
        return self._next_due - now

    def _next_cron_in_s(self) -> float:
        """Seconds until arq's heart_beat must queue the next cron run (it does so up to a
        second ahead, with the run's time as the job's due time)."""
        now = datetime.now(tz=self.timezone)
        ahead = [(c.next_run - now).total_seconds() - 0.5 for c in self.cron_jobs if c.next_run is not None]
        return max(0.0, min(ahead, default=math.inf))

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's, except that a job still running here is not started again here: its lock can
        be gone while it runs (after a failover, the promoted replica never got its renewals),
        and arq would run it twice side by side, failing it in its own bookkeeping."""
        self._saw_due = bool(job_ids)
        running = {job_id for job_id, task in self.tasks.items() if not task.done()}
        await super().start_jobs([job_id for job_id in job_ids if job_id.decode() not in running])

    async def close(self) -> None:
        if self._waiter is not None:
            await self._waiter.close()
        await super().close()

    async def run_job(self, job_id: str, score: int) -> None:
        """arq's start of one job, around which no error of that job can end the worker: a
        job whose key expired before it ran is dead-lettered, and one arq cannot start
        (whatever got past the envelope checks) is dead-lettered and taken off the queue."""
        try:
            if not await self.pool.exists(job_key(job_id)):
                await self._dead_letter_unrunnable(job_id, "JobExpired", _expired_message(score))
            await super().run_job(job_id, score)
        except (RedisError, OSError):
            raise  # Redis away: the job keeps its short lock and runs again (see _poll_iteration)
        except Exception as exc:  # noqa: BLE001 - dead-lettered below, never swallowed
            message = f"arq could not run it: {type(exc).__name__}: {exc}"
            await self._dead_letter_unrunnable(job_id, "UnrunnableJob", message)
            await self.finish_failed_job(job_id, None)

    async def _dead_letter_unrunnable(self, job_id: str, error_type: str, message: str) -> None:
        raw = await self.pool.get(job_key(job_id))
        args = [raw[:2000].decode(errors="replace")] if raw else []
        ctx: Context = {**context_of(self), "job_id": job_id, "job_try": 1}
        await dead_letter(ctx, f"({error_type})", args, error_type, message)


def _expired_message(score: int) -> str:
    due = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(score / 1000))
    return f"expired before it ran (due {due} UTC; its job key is gone, the payload with it)"


def make_worker(worker_kwargs: dict[str, Any], **overrides: Any) -> Worker:
    """A :class:`FleetWorker` whose job locks start short.

    arq locks a job it picks for (longest timeout + 10 s) before the job's code runs; a worker
    killed in that moment would hold the job for minutes. Starting every lock at LOCK_TTL_S
    closes that gap. (Under the stock arq CLI the first lock keeps arq's length.)"""
    worker = FleetWorker(**worker_kwargs, **overrides)
    lock_ttl_s = worker_kwargs.get("ctx", {}).get("lock_ttl_s")
    if lock_ttl_s:
        worker.in_progress_timeout_s = lock_ttl_s
    return worker


async def close_worker(worker: Worker) -> None:
    """``worker.close()``, safe against arq's shutdown race.

    A job task cancelled before it entered arq's own ``try`` ends in ``CancelledError``,
    and arq's close() would re-raise it half-way, skipping on_shutdown (the render pool) and
    the connection close. Such a job is not lost: it is still queued and runs again."""
    if not worker._handle_signals:
        worker.handle_sig(signal.SIGUSR1)
    await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
    worker.tasks.clear()
    await worker.close()
