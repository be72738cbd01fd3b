"""Waking idle workers when work is queued, instead of polling Redis all the time.

An idle arq worker polls its queue every ``poll_delay``: at 0.02 s that is about 50 commands
a second per queue, for nothing. Here every enqueue also pushes a token to the queue's wake
list (``<queue>:wake``, capped, so it never grows) and an idle worker waits for one in
``BLPOP`` on a connection of its own: Redis wakes it as soon as a token lands, and an idle
blocked connection sends nothing. The poll stays, as a slow fallback (IDLE_POLL_S) for what
no token announces: jobs queued by stock arq clients, jobs of a killed worker whose lock ran
out. Deferred jobs need no token to start on time: the wait never outlasts the next one's
due time.
"""

from __future__ import annotations

import math
import time
from typing import Any

from arq.connections import ArqRedis, RedisSettings
from redis.asyncio.client import Pipeline

from fleet.connections import connect
from fleet.keys import wake_key

TOKENS_KEPT = 100
"""A wake list holds at most this many tokens: enough to wake that many idle workers at once;
tokens left over while every worker was busy cost an idle worker one extra poll each."""
SHORTEST_WAIT_S = 0.001
"""BLPOP's timeout 0 means forever: a wait due sooner than this is no wait at all."""


def push(pipe: Pipeline, queue_name: str, jobs: int = 1) -> None:
    """Add to ``pipe`` (the enqueue's own, where it has one) a token per job, at most TOKENS_KEPT."""
    key = wake_key(queue_name)
    pipe.rpush(key, *["1"] * min(max(jobs, 1), TOKENS_KEPT))
    pipe.ltrim(key, -TOKENS_KEPT, -1)


async def nudge(redis: ArqRedis, queue_name: str, replicas: int = 0, wait_s: float = 1.0) -> int:
    """Push one token right after an enqueue that could not carry it (arq's ``enqueue_job``).

    With ``replicas``, then wait (Redis ``WAIT``, at most ``wait_s``) until that many replicas
    hold this push, hence every write before it (the enqueue included: replication keeps
    the primary's order); returns how many do."""
    async with redis.pipeline(transaction=False) as pipe:
        push(pipe, queue_name)
        if replicas:
            pipe.wait(replicas, max(1, round(wait_s * 1000)))
        done = await pipe.execute()
    return int(done[-1]) if replicas else 0


async def next_due_in_s(redis: ArqRedis, queue_name: str) -> float:
    """Seconds until the earliest job not yet due (``inf`` if none): an idle wait ends by then."""
    now_ms = time.time() * 1000
    head: list[Any] = await redis.zrangebyscore(
        queue_name, f"({now_ms:.0f}", "+inf", start=0, num=1, withscores=True
    )
    return max(0.0, (head[0][1] - now_ms) / 1000) if head else math.inf


class Waiter:
    """One worker's wait for a token, on a connection of its own (a BLPOP on the shared pool
    would hold a connection its jobs need)."""

    def __init__(self, redis_settings: RedisSettings, queue_name: str) -> None:
        self.redis_settings = redis_settings
        self.key = wake_key(queue_name)
        self._redis: ArqRedis | None = None

    async def wait(self, timeout_s: float) -> bool:
        """True if a token came within ``timeout_s`` (some work was queued), False if not."""
        if timeout_s < SHORTEST_WAIT_S:
            return False
        if self._redis is None:
            # No socket timeout on it (arq sets none): the read waits as long as the BLPOP.
            self._redis = await connect(self.redis_settings)
        # Redis takes a fractional timeout; redis-py's hint says int.
        token = await self._redis.blpop([self.key], timeout=timeout_s)  # type: ignore[arg-type,misc]
        return token is not None

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
