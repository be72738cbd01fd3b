"""The queue layer both worker kinds are built from: registration, retry policy, arq settings.

Job code raises :class:`PermanentError` or :class:`TransientError` and nothing else catches
them: the adapter made here is the one place that turns them into arq outcomes. Since arq's
``Retry`` is raised *by this adapter*, after the job's own code has finished, no ``except``
inside a job can swallow it.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic

from arq.worker import Function, Retry, func

from fleet import coalesce, serializer
from fleet.client import FleetClient
from fleet.connections import redis_settings
from fleet.errors import PermanentError, RegistryError, TransientError
from fleet.registry import JobSpec, P, Queue, jobs_of, queue_key
from fleet.settings import Settings

Context = dict[str, Any]
Hook = Callable[[Context], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Handler(Generic[P]):
    """A job function bound to the spec it implements."""

    spec: JobSpec[P]
    run: Callable[[Context, P], Awaitable[Any]]


def handles(spec: JobSpec[P]) -> Callable[[Callable[[Context, P], Awaitable[Any]]], Handler[P]]:
    """Decorator: ``@handles(RENDER_UPLOAD)`` marks a coroutine as the worker side of a spec."""

    def bind(run: Callable[[Context, P], Awaitable[Any]]) -> Handler[P]:
        return Handler(spec, run)

    return bind


def backoff_s(job_try: int, settings: Settings) -> float:
    """Full-jitter exponential backoff before the next try (try numbers start at 1)."""
    ceiling = min(settings.retry_cap_s, settings.retry_base_s * 2 ** (job_try - 1))
    return random.uniform(0, ceiling)


def _adapt(handler: Handler[Any], settings: Settings) -> Function:
    spec = handler.spec

    async def run_job(ctx: Context, data: Any = None) -> Any:
        payload = spec.decode(data)
        if spec.coalesce:
            await coalesce.release(
                ctx["redis"], spec.coalesce_key(settings.namespace, payload), ctx["job_id"]
            )
        try:
            return await handler.run(ctx, payload)
        except TransientError as exc:
            job_try = int(ctx.get("job_try", 1))
            if job_try >= settings.max_tries:
                raise PermanentError(f"gave up after {job_try} tries: {exc}") from exc
            raise Retry(defer=backoff_s(job_try, settings)) from exc

    run_job.__qualname__ = run_job.__name__ = spec.name
    # arq's own max_tries must not end a job before our policy does.
    return func(run_job, name=spec.name, max_tries=settings.max_tries + 1)


def build_worker(
    queue: Queue,
    handlers: Sequence[Handler[Any]],
    settings: Settings,
    *,
    on_startup: Hook | None = None,
    on_shutdown: Hook | None = None,
    max_jobs: int = 10,
    job_timeout_s: float = 300,
) -> dict[str, Any]:
    """arq worker settings for ``queue`` (a dict the stock ``arq`` CLI accepts).

    Refuses to build unless ``handlers`` covers exactly the registry's jobs for ``queue``.
    """
    expected = {spec.name for spec in jobs_of(queue)}
    given = [h.spec.name for h in handlers]
    if strays := [h.spec.name for h in handlers if h.spec.queue is not queue]:
        raise RegistryError(f"worker for {queue} given jobs of other queues: {strays}")
    if missing := expected - set(given):
        raise RegistryError(f"worker for {queue} does not register {sorted(missing)}")
    if len(given) != len(set(given)):
        raise RegistryError(f"worker for {queue} registers a job twice: {given}")

    async def startup(ctx: Context) -> None:
        ctx["settings"] = settings
        ctx["fleet"] = FleetClient(ctx["redis"], settings)  # for jobs that queue follow-up jobs
        if on_startup is not None:
            await on_startup(ctx)

    async def shutdown(ctx: Context) -> None:
        if on_shutdown is not None:
            await on_shutdown(ctx)

    name = queue_key(settings.namespace, queue)
    return {
        "functions": [_adapt(h, settings) for h in handlers],
        "queue_name": name,
        "health_check_key": f"{name}:health-check",
        "redis_settings": redis_settings(settings),
        "job_serializer": serializer.serialize,
        "job_deserializer": serializer.deserialize,
        "on_startup": startup,
        "on_shutdown": shutdown,
        "max_jobs": max_jobs,
        "poll_delay": settings.poll_delay_s,
        "job_timeout": job_timeout_s,
        "keep_result": settings.keep_result_s,
        "max_tries": settings.max_tries + 1,
        "health_check_interval": 10,
    }
