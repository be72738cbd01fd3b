"""Idle workers wait in Redis for a wake token instead of polling (fleet.wake).

A private Redis per test where commands are counted, so no other test's traffic is in the count.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from arq.connections import ArqRedis

from fleet import wake
from fleet.client import FleetClient
from fleet.errors import TransientError
from fleet.keys import in_progress_key, queue_key, wake_key
from fleet.registry import DELETE_FROM_IQDB, INDEX_IQDB, IqdbIndex, Queue
from fleet.services import EmbeddedRedis
from fleet.settings import Settings
from fleet.worker import Context, build_worker, handles
from tests.conftest import running_worker

WINDOW_S = 5.0
"""Idle commands are counted over this window (a count, not a time)."""


@pytest.fixture
def server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as redis:
        yield redis


@pytest.fixture
def quiet(settings: Settings, server: EmbeddedRedis) -> Settings:
    """Settings on the private server; the replica heartbeat (its own, slower timer) kept
    out of the count, and the fallback poll far away, so only a token or a due time wakes."""
    return settings.replace(redis_url=server.url, health_interval_s=3600, idle_poll_s=60)


@pytest.fixture
async def fleet_client(quiet: Settings) -> AsyncIterator[FleetClient]:
    async with await FleetClient.connect(quiet) as c:
        yield c


def iqdb_worker(settings: Settings, starts: list[float], fail_first: bool = False) -> dict[str, Any]:
    """An IQDB-queue worker recording when each index job starts."""

    @handles(INDEX_IQDB)
    async def index(ctx: Context, payload: Any) -> int:
        starts.append(time.time())
        if fail_first and ctx["job_try"] == 1:
            raise TransientError("IQDB is restarting")
        return int(ctx["job_try"])

    @handles(DELETE_FROM_IQDB)
    async def delete(ctx: Context, payload: Any) -> None:
        return None

    return build_worker(Queue.IQDB, [index, delete], settings)


async def commands(redis: ArqRedis) -> int:
    """Commands this server has run, less the INFO and CLIENT calls the test makes itself."""
    stats = await redis.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_info",) and "client" not in k)


async def wait_blocked(redis: ArqRedis, waiters: int = 1, deadline_s: float = 15.0) -> None:
    """Until ``waiters`` connections sit in BLPOP: the workers are idle and waiting in Redis."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        clients = await redis.client_list()
        if sum(c["cmd"] == "blpop" and "b" in c["flags"] for c in clients) >= waiters:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {waiters} worker(s) waiting in BLPOP within {deadline_s} s: {clients}")


async def test_an_idle_worker_sends_at_most_one_command_a_second(
    quiet: Settings, fleet_client: FleetClient
) -> None:
    starts: list[float] = []
    settings = quiet.replace(idle_poll_s=Settings().idle_poll_s)  # the default fallback poll, counted
    async with running_worker(iqdb_worker(settings, starts)):
        job = await fleet_client.index_iqdb(1, "a.jpg")
        assert await job.result(timeout=30, poll_delay=0.05) == 1
        before = await commands(fleet_client.redis)
        await asyncio.sleep(WINDOW_S)  # a window to count commands in, nothing asserted on time
        idle = await commands(fleet_client.redis) - before
    # Polling every POLL_DELAY_S (0.02 s) sent about 250 here.
    assert idle <= WINDOW_S * 1.0 + 3, f"{idle} commands in {WINDOW_S} s from one idle worker"


async def test_a_job_queued_to_an_idle_worker_starts(quiet: Settings, fleet_client: FleetClient) -> None:
    starts: list[float] = []
    async with running_worker(iqdb_worker(quiet, starts)):
        await wait_blocked(fleet_client.redis)
        job = await fleet_client.index_iqdb(1, "a.jpg")
        # Far sooner than the fallback poll (IDLE_POLL_S=60): the token woke it.
        assert await job.result(timeout=20, poll_delay=0.05) == 1


async def test_a_deferred_job_queued_without_a_token_runs_when_due(
    quiet: Settings, fleet_client: FleetClient
) -> None:
    """A stock arq enqueue pushes no token: the idle wait must still end at the job's due time."""
    starts: list[float] = []
    queued_at = time.time()
    job = await fleet_client.redis.enqueue_job(
        INDEX_IQDB.name,
        INDEX_IQDB.encode(IqdbIndex(1, "a.jpg")),
        _queue_name=queue_key(quiet.namespace, Queue.IQDB),
        _defer_by=1.5,
    )
    assert job is not None
    async with running_worker(iqdb_worker(quiet, starts)):
        assert await job.result(timeout=20, poll_delay=0.05) == 1
    assert starts[0] >= queued_at + 1.5


async def test_a_deferred_job_queued_to_an_idle_worker_runs_when_due(
    quiet: Settings, fleet_client: FleetClient
) -> None:
    starts: list[float] = []
    async with running_worker(iqdb_worker(quiet, starts)):
        await wait_blocked(fleet_client.redis)
        queued_at = time.time()
        job = await fleet_client.enqueue(INDEX_IQDB, IqdbIndex(1, "a.jpg"), defer_s=1.5)
        assert await job.result(timeout=20, poll_delay=0.05) == 1
    assert starts[0] >= queued_at + 1.5


async def test_a_retry_with_backoff_comes_back_to_an_idle_worker(
    quiet: Settings, fleet_client: FleetClient
) -> None:
    starts: list[float] = []
    settings = quiet.replace(retry_base_s=1.0, retry_cap_s=1.0)
    async with running_worker(iqdb_worker(settings, starts, fail_first=True)):
        job = await fleet_client.index_iqdb(1, "a.jpg")
        assert await job.result(timeout=20, poll_delay=0.05) == 2  # long before IDLE_POLL_S=60
    assert len(starts) == 2


async def test_two_idle_workers_both_wake_for_two_jobs(quiet: Settings, fleet_client: FleetClient) -> None:
    starts: list[float] = []
    async with running_worker(iqdb_worker(quiet, starts), iqdb_worker(quiet, starts)):
        await wait_blocked(fleet_client.redis, waiters=2)
        jobs = [await fleet_client.index_iqdb(i, "a.jpg") for i in (1, 2)]
        assert [await j.result(timeout=20, poll_delay=0.05) for j in jobs] == [1, 1]


async def test_the_wake_list_never_grows_past_its_cap(quiet: Settings, fleet_client: FleetClient) -> None:
    """Tokens pushed while no worker listens are capped, not kept forever."""
    for i in range(wake.TOKENS_KEPT + 50):
        await fleet_client.index_iqdb(i, "a.jpg")
    await fleet_client.recalculate_rating(1)
    key = wake_key(queue_key(quiet.namespace, Queue.IQDB))
    assert await fleet_client.redis.llen(key) == wake.TOKENS_KEPT  # type: ignore[misc]


async def test_poll_mode_keeps_arqs_polling(quiet: Settings, fleet_client: FleetClient) -> None:
    """WAKE_ON_ENQUEUE=0: no worker waits in BLPOP; jobs still start (by polling)."""
    starts: list[float] = []
    async with running_worker(iqdb_worker(quiet.replace(wake_on_enqueue=False), starts)):
        job = await fleet_client.index_iqdb(1, "a.jpg")
        assert await job.result(timeout=20, poll_delay=0.05) == 1
        assert not [c for c in await fleet_client.redis.client_list() if c["cmd"] == "blpop"]


async def test_a_killed_workers_job_is_picked_up_by_an_idle_worker_soon_after_its_lock(
    quiet: Settings, fleet_client: FleetClient
) -> None:
    """What a SIGKILLed worker leaves: a due job under a lock nobody renews. No token will
    come; the idle worker must not wait for the fallback poll (IDLE_POLL_S=60) to run it."""
    starts: list[float] = []
    settings = quiet.replace(lock_ttl_s=2.0)
    job = await fleet_client.index_iqdb(1, "a.jpg")
    await fleet_client.redis.psetex(in_progress_key(job.job_id), 2000, b"1")
    await fleet_client.redis.delete(wake_key(queue_key(quiet.namespace, Queue.IQDB)))
    async with running_worker(iqdb_worker(settings, starts)):
        assert await job.result(timeout=20, poll_delay=0.05) == 1
