"""What the operators' page reads and does, in one place.

Every call the page makes into the rest of fleet (``fleet.health``, ``fleet.deadletters``,
``fleet.bulk``) goes through this module, so a change of their signatures is adapted here
and nowhere else. Everything returned is plain JSON-able data; nothing here knows HTTP.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from arq.connections import ArqRedis

from fleet import health
from fleet.bulk import OUTCOMES, BulkRun
from fleet.client import FleetClient
from fleet.deadletters import DeadLetter, DeadLetters, retry
from fleet.errors import FleetError, InvalidPayloadError
from fleet.keys import bulk_run_prefix
from fleet.registry import Queue
from fleet.settings import Settings

LETTERS_SHOWN = 200
"""Dead letters shown per queue (the oldest first); the count says how many there are."""


async def queues(redis: ArqRedis, settings: Settings) -> list[dict[str, Any]]:
    """``fleet status`` per queue: ready, deferred, in progress, dead letters, jobs per minute."""
    return [await health.status(redis, settings, queue) for queue in Queue]


async def replicas(redis: ArqRedis, settings: Settings) -> list[dict[str, Any]]:
    """Every replica with a beat, live or stale, with what its heartbeat holds."""
    now = time.time()
    found: list[dict[str, Any]] = []
    for queue in Queue:
        checked = await health.check(redis, settings, queue)
        names = [*checked.live, *checked.stale]
        for name, info in zip(names, await health.beats(redis, settings, queue, names), strict=True):
            found.append(
                {
                    "queue": queue.value,
                    "replica": name,
                    "live": name in checked.live,
                    "beat_age_s": round(now - float(info.get("at", now)), 1) if info else None,
                    "running": info.get("running"),
                    "succeeded": info.get("succeeded"),
                    "retried": info.get("retried"),
                    "dead_lettered": info.get("dead_lettered"),
                    "problem": info.get("problem"),
                    "pool_size": info.get("pool_size"),
                    "rss_bytes": info.get("rss_bytes"),
                }
            )
    return found


async def bulk_runs(redis: ArqRedis, settings: Settings) -> list[dict[str, Any]]:
    """``fleet rethumb`` runs with progress and, while one runs, its ETA at the mean rate so far."""
    prefix = bulk_run_prefix(settings.namespace)
    runs: list[dict[str, Any]] = []
    async for raw_key in redis.scan_iter(match=f"{prefix}*", count=500):
        run_id = raw_key.decode()[len(prefix) :]
        if ":" in run_id:  # the run's bitmap of finished ids
            continue
        try:
            state = await BulkRun(redis, settings.namespace, run_id).state()
        except InvalidPayloadError:  # not a run fleet made (a planted key): not shown
            continue
        if "total" in state:
            runs.append(_run_progress(run_id, state))
    return sorted(runs, key=lambda run: -run["started_at"])


def _run_progress(run_id: str, state: dict[str, str]) -> dict[str, Any]:
    counts = {k: int(state.get(k, 0)) for k in ("total", "fed", *OUTCOMES)}
    done = sum(counts[o] for o in OUTCOMES)
    started = float(state.get("started_at", 0))
    finished = state.get("finished") == "1"
    ended = float(state.get("finished_at", 0)) if finished else time.time()
    elapsed = max(0.0, ended - started)
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = None if finished or rate <= 0 else round((counts["total"] - done) / rate)
    return {
        "run_id": run_id, **counts, "done": done, "finished": finished, "started_at": started,
        "images_per_s": round(rate, 2), "eta_s": eta,
    }  # fmt: skip


def _letters(client: FleetClient) -> DeadLetters:
    return DeadLetters(client.redis, client.settings.namespace, client.settings.dead_letter_ttl_s)


async def dead_letters(client: FleetClient) -> dict[str, dict[str, Any]]:
    """Per queue: how many letters there are and the oldest ``LETTERS_SHOWN`` of them."""
    shown: dict[str, dict[str, Any]] = {}
    for queue in Queue:
        letters = await _letters(client).list(queue.value)
        shown[queue.value] = {
            "count": len(letters),
            "letters": [asdict(letter) for letter in letters[:LETTERS_SHOWN]],
        }
    return shown


async def retry_letters(client: FleetClient, job_id: str | None, queue: str | None) -> dict[str, Any]:
    """Queue again one letter (``job_id``) or all of ``queue`` (all queues when None)."""
    letters = _letters(client)
    chosen = await _chosen(letters, job_id, queue)
    queued: dict[str, str] = {}
    refused: dict[str, str] = {}
    for letter in chosen:
        try:
            queued[letter.job_id] = (await retry(letters, letter, client)).job_id
        except FleetError as exc:  # never a valid job: it stays, with the reason shown
            refused[letter.job_id] = str(exc)
    return {"queued": queued, "refused": refused}


async def purge_letters(client: FleetClient, job_id: str | None, queue: str | None) -> dict[str, Any]:
    """Drop one letter (``job_id``) or all of ``queue`` (all queues when None)."""
    letters = _letters(client)
    if job_id is None:
        return {"purged": await letters.purge(queue)}
    chosen = await _chosen(letters, job_id, queue)
    for letter in chosen:
        await letters.remove(letter)
    return {"purged": len(chosen)}


async def _chosen(letters: DeadLetters, job_id: str | None, queue: str | None) -> list[DeadLetter]:
    if job_id is None:
        return await letters.list(queue)
    letter = await letters.get(job_id)
    if letter is None:
        raise LookupError(f"no dead letter {job_id}")
    return [letter]
