"""Coalesced jobs: at most one queued job per key, without losing work that arrives while
one runs.

Enqueueing takes a "pending" slot, writes arq's job and wakes a worker in one Lua script, so
a crash can never leave a slot taken with no job behind it. The job gives the slot back when it
*starts*: a vote that lands during a recalculation takes the slot again and queues one more
recalculation, which reads the database after that vote.
"""

from __future__ import annotations

from typing import Any

from arq.connections import ArqRedis
from arq.jobs import serialize_job
from arq.utils import timestamp_ms

from fleet import serializer, wake
from fleet.keys import ARQ_DEFAULT_QUEUE, job_key, wake_key

_TAKE_SLOT_AND_ENQUEUE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[4]) then
    redis.call('PSETEX', KEYS[2], ARGV[4], ARGV[2])
    redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
    redis.call('RPUSH', KEYS[4], '1')
    redis.call('LTRIM', KEYS[4], -tonumber(ARGV[5]), -1)
    return 1
end
return 0
"""

_RELEASE_SLOT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


async def enqueue_once(
    redis: ArqRedis,
    pending_key: str,
    queue_name: str,
    job_id: str,
    function: str,
    data: dict[str, Any],
    *,
    expires_ms: int,
) -> bool:
    """Queue the job unless one with the same ``pending_key`` is waiting; True if queued. The
    job and its slot expire after ``expires_ms`` (JOB_EXPIRY_S)."""
    now = timestamp_ms()
    payload = serialize_job(function, (data,), {}, None, now, serializer=serializer.serialize)
    queued = await redis.eval(  # type: ignore[misc]  # redis-py types eval as sync|async
        _TAKE_SLOT_AND_ENQUEUE,
        4,
        pending_key,
        job_key(job_id),
        queue_name or ARQ_DEFAULT_QUEUE,
        wake_key(queue_name or ARQ_DEFAULT_QUEUE),
        job_id,
        payload.decode(),
        str(now),
        str(expires_ms),
        str(wake.TOKENS_KEPT),
    )
    return bool(queued)


async def release(redis: ArqRedis, pending_key: str, job_id: str) -> None:
    """Give the slot back if this job holds it (a retry of an old job must not free a new one's)."""
    await redis.eval(_RELEASE_SLOT, 1, pending_key, job_id)  # type: ignore[misc]
