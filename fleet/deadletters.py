"""Dead letters: jobs that failed for good, kept with their reason so nothing is lost silently.

Each letter is one Redis key ``{ns}:dead:{job_id}`` (JSON, expiring after DEAD_LETTER_TTL_S),
indexed per queue in a sorted set ``{ns}:dead-index:{queue}`` by failure time. A retried
letter is queued again as a new job (fresh try count) and removed.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Any

from arq.connections import ArqRedis
from arq.jobs import Job

from fleet.errors import FleetError, InvalidPayloadError
from fleet.registry import ALL_JOBS, Queue


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
    def __init__(self, redis: ArqRedis, namespace: str, ttl_s: int) -> None:
        self.redis = redis
        self.namespace = namespace
        self.ttl_s = ttl_s

    def _key(self, job_id: str) -> str:
        return f"{self.namespace}:dead:{job_id}"

    def _index(self, queue: str) -> str:
        return f"{self.namespace}:dead-index:{queue}"

    async def add(self, letter: DeadLetter) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._key(letter.job_id), letter.to_json(), ex=self.ttl_s)
            pipe.zadd(self._index(letter.queue), {letter.job_id: letter.failed_at})
            pipe.zremrangebyscore(self._index(letter.queue), "-inf", time.time() - self.ttl_s)
            await pipe.execute()

    async def list(self, queue: str | None = None) -> list[DeadLetter]:
        """Oldest first; entries whose letter has expired are dropped from the index."""
        letters: list[DeadLetter] = []
        for q in [queue] if queue else [q.value for q in Queue]:
            ids = [i.decode() for i in await self.redis.zrange(self._index(q), 0, -1)]
            if not ids:
                continue
            raws = await self.redis.mget([self._key(i) for i in ids])
            gone = [i for i, raw in zip(ids, raws, strict=True) if raw is None]
            if gone:
                await self.redis.zrem(self._index(q), *gone)
            letters.extend(DeadLetter.from_json(raw) for raw in raws if raw is not None)
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
        letters = await self.list(queue)
        for letter in letters:
            await self.remove(letter)
        return len(letters)


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
    """Queue the letter's job again as a new job (fresh try count), then drop the letter."""
    spec, payload = requeue_spec(letter)
    job: Job = await client.enqueue(spec, payload)
    await letters.remove(letter)
    return job
