"""Per-replica heartbeats, ``fleet health`` and ``fleet status``.

arq writes one health key per queue, so replicas overwrite each other and a dead replica
hides behind a live one. Here every replica beats on its own (``{ns}:replicas:{queue}``, a
sorted set scored by the last beat, with the replica's numbers in a hash), and finished jobs
are counted in 10-second buckets for a per-queue throughput.

A container's healthcheck must judge its own workers, not the queue: each worker process
also registers its replicas in a small file under ``RUNTIME_DIR`` (local to the container),
and ``fleet health --self`` checks the beats of those replicas only (``check_self``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arq.connections import ArqRedis
from redis.exceptions import RedisError

from fleet.keys import dead_index_key, finished_key, queue_key, replica_info_key, replicas_key
from fleet.logging import get_logger
from fleet.registry import Queue
from fleet.settings import Settings

log = logging.getLogger("fleet.health")

BUCKET_S = 10
INFO_REFRESH_S = 30.0
"""An idle replica's numbers (RSS drifts) are rewritten at least this often."""


def replica_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class ReplicaStats:
    """What one replica did since it started; beaten into Redis with each heartbeat."""

    succeeded: int = 0
    retried: int = 0
    dead_lettered: int = 0
    running: set[str] = field(default_factory=set)
    pool_size: int | None = None
    """Render processes behind the replica (img workers only)."""
    problem: str | None = None
    """Set while the replica cannot do its work (e.g. its database is unreachable): it still
    beats, but health checks call it unhealthy and say why."""


def _process_state(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks) from /proc, or None where there is no /proc entry."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
    return fields[0], fields[19]


def _alive(pid: int, started: str | None) -> bool:
    """The registering process still runs: not gone, not a zombie, and not another process
    that reuses its pid (a restarted container's new PID 1 has the old one's pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    state = _process_state(pid)
    if state is None:
        return not os.path.exists("/proc/self/stat")  # no /proc here: trust kill(0)
    return state[0] not in ("Z", "X") and (started is None or state[1] == started)


@dataclass(frozen=True)
class Registration:
    """One replica of a worker process in this container, as written under RUNTIME_DIR."""

    path: Path
    namespace: str
    queue: str
    replica: str
    pid: int
    started: str | None
    registered_at: float


def _registration_path(settings: Settings, queue: Queue, pid: int) -> Path:
    return settings.runtime_dir / f"{settings.namespace}.{queue.value}.{pid}.json"


def register(settings: Settings, queue: Queue, replica: str) -> Path:
    """Record this process's replica of ``queue`` for ``fleet health --self`` (atomically)."""
    pid = os.getpid()
    state = _process_state(pid)
    path = _registration_path(settings, queue, pid)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "namespace": settings.namespace,
        "queue": queue.value,
        "replica": replica,
        "pid": pid,
        "started": state[1] if state else None,
        "registered_at": time.time(),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)
    return path


def registrations(settings: Settings) -> list[Registration]:
    """This container's live replicas of ``settings.namespace``; files of processes that are
    gone are removed (a container whose main process died is restarted by its policy)."""
    found: list[Registration] = []
    try:
        paths = sorted(settings.runtime_dir.glob("*.json"))
    except OSError:
        return found
    for path in paths:
        try:
            raw = json.loads(path.read_text())
            entry = Registration(
                path, raw["namespace"], raw["queue"], raw["replica"], int(raw["pid"]), raw["started"],
                float(raw["registered_at"]),
            )  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError):
            continue  # vanished meanwhile (a clean stop), or not ours
        if entry.namespace != settings.namespace:
            continue
        if not _alive(entry.pid, entry.started):
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        found.append(entry)
    return found


class Outage:
    """A background task's view of Redis: an outage is logged once when it starts and once
    when it ends, however long it lasts and however often the task tries meanwhile."""

    def __init__(self, task: str) -> None:
        self.task = task
        self.since: float | None = None
        self._log = get_logger("fleet.outage")

    def failed(self, exc: BaseException) -> None:
        if self.since is None:
            self.since = time.monotonic()
            self._log.warning(
                "redis_unavailable", task=self.task, error_type=type(exc).__name__, error=str(exc)
            )

    def ended(self) -> None:
        if self.since is not None:
            away_s = round(time.monotonic() - self.since, 1)
            self.since = None
            self._log.info("redis_available_again", task=self.task, outage_s=away_s)


class Heartbeat:
    def __init__(self, settings: Settings, queue: Queue, stats: ReplicaStats) -> None:
        self.settings = settings
        self.queue = queue
        self.stats = stats
        self.replica = replica_id()
        self._task: asyncio.Task[None] | None = None
        self._registered: Path | None = None
        self._written: dict[str, Any] | None = None
        self._written_at = 0.0
        self.render: dict[str, Any] | None = None
        """An img worker's render settings, beaten so that ``fleet rethumb`` can refuse to feed
        workers that render with others (and name the settings that differ)."""
        if queue in (Queue.IMG, Queue.IMG_BULK):
            self.render = settings.render.by_name()

    def start(self, redis: ArqRedis) -> None:
        self.replica = replica_id()  # the process that serves, whoever built the settings
        try:
            self._registered = register(self.settings, self.queue, self.replica)
        except OSError as exc:  # the worker serves anyway; only `fleet health --self` misses it
            log.warning("replica not registered under %s: %s", self.settings.runtime_dir, exc)
        self._task = asyncio.create_task(self._run(redis))

    async def stop(self, redis: ArqRedis) -> None:
        if self._registered is not None:
            with contextlib.suppress(OSError):
                self._registered.unlink()
            self._registered = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(OSError):  # a clean stop is not a dead replica
            key = replicas_key(self.settings.namespace, self.queue)
            await redis.zrem(key, self.replica)
            await redis.hdel(replica_info_key(key), self.replica)  # type: ignore[misc]

    async def beat(self, redis: ArqRedis) -> None:
        key = replicas_key(self.settings.namespace, self.queue)
        now = time.time()
        info = {
            "replica": self.replica,
            "at": now,
            "succeeded": self.stats.succeeded,
            "retried": self.stats.retried,
            "dead_lettered": self.stats.dead_lettered,
            "running": len(self.stats.running),
            "problem": self.stats.problem,
            "pool_size": self.stats.pool_size,
            "rss_bytes": _rss_bytes(),
            "render": self.render,
        }
        # The beat is the score; the numbers are rewritten only when they changed (or every
        # INFO_REFRESH_S): an idle replica then costs Redis one command per beat.
        numbers = {k: v for k, v in info.items() if k not in ("at", "rss_bytes")}
        stale = numbers != self._written or now - self._written_at >= INFO_REFRESH_S
        async with redis.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {self.replica: now})
            if stale:
                pipe.hset(replica_info_key(key), self.replica, json.dumps(info))
            await pipe.execute()
        if stale:
            self._written, self._written_at = numbers, now

    async def _run(self, redis: ArqRedis) -> None:
        outage = Outage("heartbeat")
        while True:
            try:
                await self.beat(redis)
            except (RedisError, OSError) as exc:  # Redis away, however long: beat again when it is back
                outage.failed(exc)
            else:
                outage.ended()
            await asyncio.sleep(self.settings.health_interval_s / 2)  # one missed beat is tolerated


def _rss_bytes() -> int | None:
    """This process's resident memory (the render processes have their own)."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


async def beats(
    redis: ArqRedis, settings: Settings, queue: Queue, replicas: list[str]
) -> list[dict[str, Any]]:
    """What each of ``replicas`` last beat (its counters, problem, pool size, RSS); {} if none."""
    if not replicas:
        return []
    key = replicas_key(settings.namespace, queue)
    found = await _numbers(redis, key, replicas)
    for info, at in zip(found, await redis.zmscore(key, replicas), strict=True):
        if info and at is not None:
            info["at"] = at  # the last beat (the numbers may have been written earlier)
    return found


async def _numbers(redis: ArqRedis, key: str, replicas: list[str]) -> list[dict[str, Any]]:
    if not replicas:
        return []
    infos = await redis.hmget(replica_info_key(key), replicas)  # type: ignore[misc]
    return [json.loads(raw) if raw else {} for raw in infos]


async def count_finished(redis: ArqRedis, namespace: str, queue: Queue) -> None:
    key = finished_key(namespace, queue, int(time.time()) // BUCKET_S)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.incr(key)
        pipe.expire(key, 120)
        await pipe.execute()


@dataclass
class QueueHealth:
    queue: str
    live: list[str]
    stale: list[str]
    numbers: dict[str, dict[str, Any]] = field(default_factory=dict)
    """What each live replica last beat (counters, problem, pool size, RSS)."""

    @property
    def troubled(self) -> dict[str, str]:
        """Live replicas that report a problem, with it."""
        return {name: str(info["problem"]) for name, info in self.numbers.items() if info.get("problem")}

    @property
    def healthy(self) -> bool:
        return bool(self.live) and not self.stale and not self.troubled


async def check(redis: ArqRedis, settings: Settings, queue: Queue) -> QueueHealth:
    """Live replicas beat within the last interval (they beat twice per interval); stale ones
    stopped beating without stopping cleanly (killed), so a SIGKILLed replica is reported
    within one interval. Stale entries are forgotten after ten intervals."""
    key = replicas_key(settings.namespace, queue)
    now = time.time()
    fresh_after = now - settings.health_interval_s
    forget_before = now - 10 * settings.health_interval_s
    beats = await redis.zrange(key, 0, -1, withscores=True)
    live, stale, gone = [], [], []
    for member, at in beats:
        name = member.decode()
        if at >= fresh_after:
            live.append(name)
        elif at >= forget_before:
            stale.append(name)
        else:
            gone.append(name)
    if gone:
        await redis.zrem(key, *gone)
        await redis.hdel(replica_info_key(key), *gone)  # type: ignore[misc]
    numbers = dict(zip(live, await _numbers(redis, key, live), strict=True))
    return QueueHealth(queue.value, live, stale, numbers)


@dataclass
class SelfHealth:
    """One replica of this container: beating within the last interval, or not."""

    queue: str
    replica: str
    age_s: float
    beating: bool
    problem: str | None = None

    @property
    def healthy(self) -> bool:
        return self.beating and self.problem is None


async def check_self(redis: ArqRedis, settings: Settings, queue: Queue | None = None) -> list[SelfHealth]:
    """The replicas registered in this container (optionally of one ``queue``), each judged by
    its own beat: a live process whose last beat (or registration, before its first beat) is
    older than one interval is wedged, whatever other replicas of its queue do."""
    now = time.time()
    results = []
    for entry in registrations(settings):
        if queue is not None and entry.queue != queue.value:
            continue
        key = replicas_key(settings.namespace, Queue(entry.queue))
        beat = await redis.zscore(key, entry.replica)
        raw = await redis.hget(replica_info_key(key), entry.replica)  # type: ignore[misc]
        problem = json.loads(raw).get("problem") if raw else None
        age = now - max(beat or 0.0, entry.registered_at)
        results.append(
            SelfHealth(entry.queue, entry.replica, age, age <= settings.health_interval_s, problem)
        )
    return results


async def status(redis: ArqRedis, settings: Settings, queue: Queue) -> dict[str, Any]:
    """Per-queue numbers for ``fleet status``."""
    name = queue_key(settings.namespace, queue)
    now_ms = time.time() * 1000
    health = await check(redis, settings, queue)
    running = sum(info.get("running", 0) for info in health.numbers.values())
    due = await redis.zcount(name, "-inf", now_ms)
    deferred = await redis.zcount(name, f"({now_ms}", "+inf")
    bucket = int(time.time()) // BUCKET_S
    counts = await redis.mget(
        [finished_key(settings.namespace, queue, b) for b in range(bucket - 5, bucket + 1)]
    )
    dead = await redis.zcard(dead_index_key(settings.namespace, queue))
    return {
        "queue": queue.value,
        "ready": max(0, due - running),
        "deferred": deferred,
        "in_progress": running,
        "dead_letters": dead,
        "live_replicas": len(health.live),
        "stale_replicas": len(health.stale),
        "finished_last_minute": sum(int(c or 0) for c in counts),
    }
