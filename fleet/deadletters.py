"""Dead letters: jobs that failed for good, kept with their reason so nothing is lost silently.

Each letter is one Redis key (JSON, expiring after DEAD_LETTER_TTL_S), indexed per queue in
a sorted set by failure time (:mod:`fleet.keys`). At most DEAD_LETTER_MAX are kept per queue:
the oldest beyond it are dropped and counted. Letters are read a page at a time, newest
first. A retried letter is queued again as a new job (fresh try count) and removed.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from arq.connections import ArqRedis
from arq.jobs import Job

from fleet.errors import FleetError, InvalidPayloadError
from fleet.keys import dead_dropped_key, dead_index_key, dead_letter_key
from fleet.registry import ALL_JOBS, RENDER_BATCH, Queue
from fleet.settings import Settings

_ADD = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[5])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[6])
if over > 0 then
    local oldest = redis.call('ZRANGE', KEYS[2], 0, over - 1)
    for _, id in ipairs(oldest) do
        redis.call('DEL', ARGV[7] .. id)
    end
    redis.call('ZREMRANGEBYRANK', KEYS[2], 0, over - 1)
    redis.call('INCRBY', KEYS[3], over)
end
return over
"""
"""Store a letter, forget index entries past the TTL, and drop the oldest past the cap: one
atomic step, so the index and the letters never disagree about the cap."""

PAGE = 500
"""Letters read per round trip when walking a whole queue (retry --all, purge)."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    job_id: str
    queue: str
    function: str
    args: list[Any]
    error_type: str
    message: str
    tries: int
    failed_at: float

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> DeadLetter:
        return cls(**json.loads(raw))


class DeadLetters:
    def __init__(self, redis: ArqRedis, namespace: str, ttl_s: int, max_kept: int = 10_000) -> None:
        self.redis = redis
        self.namespace = namespace
        self.ttl_s = ttl_s
        self.max_kept = max_kept

    @classmethod
    def of(cls, redis: ArqRedis, settings: Settings) -> DeadLetters:
        return cls(redis, settings.namespace, settings.dead_letter_ttl_s, settings.dead_letter_max)

    def _key(self, job_id: str) -> str:
        return dead_letter_key(self.namespace, job_id)

    def _index(self, queue: str) -> str:
        return dead_index_key(self.namespace, queue)

    def _dropped_key(self, queue: str) -> str:
        return dead_dropped_key(self.namespace, queue)

    async def add(self, letter: DeadLetter) -> None:
        """Keep ``letter``; past DEAD_LETTER_MAX the queue's oldest letters are dropped (counted)."""
        touched = (self._key(letter.job_id), self._index(letter.queue), self._dropped_key(letter.queue))
        await self.redis.eval(  # type: ignore[misc]  # redis-py types eval as sync|async
            _ADD, len(touched), *touched,
            letter.to_json(), str(self.ttl_s), repr(letter.failed_at), letter.job_id,
            repr(time.time() - self.ttl_s), str(self.max_kept), self._key(""),
        )  # fmt: skip

    async def dropped(self, queue: str) -> int:
        """How many of the queue's oldest letters were dropped over DEAD_LETTER_MAX."""
        return int(await self.redis.get(self._dropped_key(queue)) or 0)

    async def count(self, queue: str | None = None) -> int:
        return sum([await self.redis.zcard(self._index(q)) for q in self._queues(queue)])

    @staticmethod
    def _queues(queue: str | None) -> list[str]:
        return [queue] if queue else [q.value for q in Queue]

    async def page(self, queue: str | None = None, *, limit: int = 50, offset: int = 0) -> list[DeadLetter]:
        """Newest first, ``limit`` letters after the first ``offset``: only those letters are
        read (and the ids up to ``offset + limit`` of each queue's index)."""
        newest: list[tuple[float, str, str]] = []
        for q in self._queues(queue):
            entries = await self.redis.zrevrange(self._index(q), 0, offset + limit - 1, withscores=True)
            newest += [(score, member.decode(), q) for member, score in entries]
        newest.sort(reverse=True)
        chosen = newest[offset : offset + limit]
        if not chosen:
            return []
        raws = await self.redis.mget([self._key(job_id) for _, job_id, _ in chosen])
        for (_, job_id, q), raw in zip(chosen, raws, strict=True):
            if raw is None:  # its letter expired: forget the index entry
                await self.redis.zrem(self._index(q), job_id)
        return [DeadLetter.from_json(raw) for raw in raws if raw is not None]

    async def each(self, queue: str | None = None) -> AsyncIterator[DeadLetter]:
        """Every letter, oldest first, read PAGE at a time (never the whole set at once)."""
        for q in self._queues(queue):
            low, seen = "-inf", set[str]()  # seen: the ids already read at score ``low``
            while True:
                entries = await self.redis.zrangebyscore(
                    self._index(q), low, "+inf", start=0, num=PAGE + len(seen), withscores=True
                )
                fresh = [(member.decode(), score) for member, score in entries if member.decode() not in seen]
                if not fresh:
                    break
                raws = await self.redis.mget([self._key(job_id) for job_id, _ in fresh])
                for raw in raws:
                    if raw is not None:
                        yield DeadLetter.from_json(raw)
                top = fresh[-1][1]
                seen = {job_id for job_id, score in fresh if score == top} | (
                    seen if repr(top) == low else set()
                )
                low = repr(top)

    async def list(self, queue: str | None = None) -> list[DeadLetter]:
        """Every letter, oldest first (at most DEAD_LETTER_MAX per queue)."""
        letters = [letter async for letter in self.each(queue)]
        return sorted(letters, key=lambda letter: letter.failed_at)

    async def get(self, job_id: str) -> DeadLetter | None:
        raw = await self.redis.get(self._key(job_id))
        return DeadLetter.from_json(raw) if raw is not None else None

    async def remove(self, letter: DeadLetter) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._key(letter.job_id))
            pipe.zrem(self._index(letter.queue), letter.job_id)
            await pipe.execute()

    async def purge(self, queue: str | None = None) -> int:
        removed = 0
        for q in self._queues(queue):
            while ids := [i.decode() for i in await self.redis.zrange(self._index(q), 0, PAGE - 1)]:
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.delete(*[self._key(i) for i in ids])
                    pipe.zrem(self._index(q), *ids)
                    await pipe.execute()
                removed += len(ids)
        return removed


def requeue_spec(letter: DeadLetter) -> tuple[Any, Any]:
    """The spec and payload to queue ``letter`` again; refuses letters that never were valid jobs."""
    spec = next((s for s in ALL_JOBS if s.name == letter.function), None)
    if spec is None or len(letter.args) != 1:
        raise FleetError(
            f"dead letter {letter.job_id} ({letter.function}) is not a job fleet can queue again"
        )
    try:
        return spec, spec.decode(letter.args[0])
    except InvalidPayloadError as exc:
        raise FleetError(f"dead letter {letter.job_id}: {exc}") from exc


async def retry(letters: DeadLetters, letter: DeadLetter, client: Any) -> Job:
    """Queue the letter's job again as a new job (fresh try count), then drop the letter.

    A bulk image's letter names its run, which recorded the image as failed (so a batch would
    skip it): that record is forgotten first, and put back if the job cannot be queued."""
    from fleet.bulk import BulkRun

    spec, payload = requeue_spec(letter)
    reopened: list[int] = []
    if spec is RENDER_BATCH:
        run = BulkRun(letters.redis, letters.namespace, payload.run_id)
        reopened = [i for i in payload.image_ids if await run.reopen(i)]
    try:
        job: Job = await client.enqueue(spec, payload)
    except BaseException:
        for image_id in reopened:
            await run.record(image_id, "failed")
        raise
    await letters.remove(letter)
    return job
