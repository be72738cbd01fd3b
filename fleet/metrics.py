"""Prometheus metrics, served by every worker process on METRICS_PORT.

``fleet_queue_ready`` (jobs due now, not running) is the autoscaling signal for img
replicas; every replica reports every queue's depth, so rules take ``max`` over replicas.
Process RSS comes from prometheus_client's process collector
(``process_resident_memory_bytes``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from arq.connections import ArqRedis
from prometheus_client import Counter, Gauge, Histogram, start_http_server
from redis.exceptions import RedisError

from fleet.errors import FleetError
from fleet.failures import Done, Outcome, RetryLater
from fleet.registry import Queue
from fleet.settings import Settings

if TYPE_CHECKING:
    from fleet.health import ReplicaStats

log = logging.getLogger("fleet.metrics")

QUEUE_READY = Gauge("fleet_queue_ready", "Jobs due now and not running (autoscaling signal)", ["queue"])
QUEUE_DEFERRED = Gauge("fleet_queue_deferred", "Jobs queued for later (retries, deferred)", ["queue"])
QUEUE_IN_PROGRESS = Gauge("fleet_queue_in_progress", "Jobs running on live replicas", ["queue"])
DEAD_LETTERS = Gauge("fleet_dead_letters", "Dead letters kept", ["queue"])
DEAD_LETTERS_DROPPED = Gauge(
    "fleet_dead_letters_dropped", "Oldest dead letters dropped over DEAD_LETTER_MAX", ["queue"]
)
LIVE_REPLICAS = Gauge("fleet_live_replicas", "Replicas with a fresh heartbeat", ["queue"])

JOBS_STARTED = Counter("fleet_jobs_started", "Jobs started by this process", ["queue", "function"])
JOBS_SUCCEEDED = Counter("fleet_jobs_succeeded", "Jobs done", ["queue", "function"])
JOBS_RETRIED = Counter("fleet_jobs_retried", "Job runs that will be retried", ["queue", "function"])
JOBS_DEAD_LETTERED = Counter(
    "fleet_jobs_dead_lettered", "Jobs failed for good, with a dead letter", ["queue", "function"]
)

JOB_DURATION = Histogram(
    "fleet_job_duration_seconds", "Job run time", ["queue", "function"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)  # fmt: skip
QUEUE_WAIT = Histogram(
    "fleet_job_queue_wait_seconds", "From queueing (or the due time) to start", ["queue"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)  # fmt: skip

POOL_SIZE = Gauge("fleet_render_pool_size", "Render processes in this worker")
POOL_BUSY = Gauge("fleet_render_pool_busy", "Render processes rendering now")


class JobCounts:
    """Every count of one job's run, in one place: this process's Prometheus metrics and the
    replica's stats (beaten with its heartbeat), one call per step, and the queue's finished
    jobs per minute (``fleet status``). Dead letters are counted where they are written
    (:func:`fleet.worker.dead_letter`): a bulk batch writes one per image that failed."""

    def __init__(self, stats: ReplicaStats, queue: Queue, function: str) -> None:
        self.stats = stats
        self.queue = queue
        self.labels = (queue.value, function)

    def started(self, due_ms: float) -> None:
        JOBS_STARTED.labels(*self.labels).inc()
        QUEUE_WAIT.labels(self.queue.value).observe(max(0.0, time.time() - due_ms / 1000))

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            JOB_DURATION.labels(*self.labels).observe(time.perf_counter() - started)

    async def ended(self, outcome: Outcome, redis: ArqRedis, namespace: str) -> None:
        """Counted once the outcome is acted on (a dead letter written, a retry decided)."""
        from fleet.health import count_finished

        if isinstance(outcome, RetryLater):
            self.stats.retried += 1
            JOBS_RETRIED.labels(*self.labels).inc()
            return
        if isinstance(outcome, Done):
            self.stats.succeeded += 1
            JOBS_SUCCEEDED.labels(*self.labels).inc()
        else:
            self.stats.dead_lettered += 1
        await count_finished(redis, namespace, self.queue)


_served_on: int | None = None


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Start the /metrics endpoint once per process (several workers may share a process).

    Loopback unless told otherwise (METRICS_HOST): the metrics name queues and job counts, and
    a host's other interfaces may face the internet; compose sets 0.0.0.0 for its Prometheus."""
    global _served_on
    if port and _served_on is None:
        _served_on = port
        try:
            start_http_server(port, addr=host)
        except OSError as exc:  # never run on silently unscraped: the alerts would say nothing
            _served_on = None
            raise FleetError(
                f"METRICS_PORT={port} cannot be served on {host} ({exc.strerror or exc}): another fleet "
                "worker on this host has it? Give each worker process its own METRICS_PORT, or 0 for none"
            ) from exc
        log.info("metrics on %s:%d/metrics", host, port)


def track_pool(size: Callable[[], float], busy: Callable[[], float]) -> None:
    POOL_SIZE.set_function(size)
    POOL_BUSY.set_function(busy)


_refreshing: asyncio.Task[None] | None = None


def start_refreshing(redis: ArqRedis, settings: Settings) -> None:
    """One refresher per process, whatever the number of workers in it."""
    global _refreshing
    if settings.metrics_port and (_refreshing is None or _refreshing.done()):
        _refreshing = asyncio.create_task(_refresh_queues(redis, settings))


async def stop_refreshing() -> None:
    global _refreshing
    if _refreshing is not None:
        _refreshing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await _refreshing
        _refreshing = None


async def _refresh_once(redis: ArqRedis, settings: Settings) -> None:
    from fleet.deadletters import DeadLetters
    from fleet.health import status

    letters = DeadLetters.of(redis, settings)
    for queue in Queue:
        row = await status(redis, settings, queue)
        QUEUE_READY.labels(queue.value).set(row["ready"])
        QUEUE_DEFERRED.labels(queue.value).set(row["deferred"])
        QUEUE_IN_PROGRESS.labels(queue.value).set(row["in_progress"])
        DEAD_LETTERS.labels(queue.value).set(row["dead_letters"])
        DEAD_LETTERS_DROPPED.labels(queue.value).set(await letters.dropped(queue.value))
        LIVE_REPLICAS.labels(queue.value).set(row["live_replicas"])


async def _refresh_queues(redis: ArqRedis, settings: Settings) -> None:
    """Keep the queue gauges current (every half health interval) until cancelled."""
    from fleet.health import Outage

    outage = Outage("metrics")
    while True:
        try:
            await _refresh_once(redis, settings)
        except (RedisError, OSError) as exc:  # Redis away, however long: refresh again when it is back
            outage.failed(exc)
        else:
            outage.ended()
        await asyncio.sleep(settings.health_interval_s / 2)
