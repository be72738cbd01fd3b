"""Upload -> queue -> worker -> pool -> files, on real Redis and real processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest
from arq.jobs import JobStatus

from fleet.client import FleetClient
from fleet.errors import EnqueueError, JobFailedError
from fleet.keys import health_check_key, queue_key
from fleet.registry import INDEX_IQDB, IqdbIndex, Queue
from fleet.services import EmbeddedRedis, free_port
from fleet.settings import Settings
from imgworker.worker import worker_settings
from tests import images
from tests.conftest import running_worker


async def test_upload_is_rendered_through_the_public_client(settings: Settings, client: FleetClient) -> None:
    filename, ext = images.jpeg(settings.storage_path, "2025-12-01-7.jpg", 2600, 1800)
    async with running_worker(worker_settings(settings)):
        job = await client.render_upload(7, filename, ext)
        result = await job.result(timeout=60, poll_delay=0.05)
    assert result["ok"] is True
    for variant in ("thumb", "medium", "large"):
        out = result["outputs"][variant]
        assert out["status"] == 1
        assert (settings.storage_path / out["path"]).stat().st_size == out["bytes"]
    assert (settings.storage_path / "thumbs" / "2025-12-01-7.webp").exists()


async def test_bad_input_fails_at_once_with_its_reason(settings: Settings, client: FleetClient) -> None:
    async with running_worker(worker_settings(settings)):
        job = await client.render_upload(8, "never-uploaded", "jpg")
        with pytest.raises(JobFailedError) as failure:
            await job.result(timeout=30, poll_delay=0.05)
        info = await job.result_info()
    assert failure.value.error_type == "MissingOriginalError"
    assert "fullsize/never-uploaded.jpg" in failure.value.message
    assert info is not None and info.job_try == 1  # permanent: not retried


async def test_a_job_is_found_again_by_its_id_alone_on_whichever_queue_holds_it(
    settings: Settings, client: FleetClient
) -> None:
    upload = await client.render_upload(10, "never-uploaded", "jpg")  # img queue, no worker yet
    flags = await client.write_variant_flags(10, 1, 1)  # db queue
    later = await client.enqueue(INDEX_IQDB, IqdbIndex(10, "iqdb/x.jpg"), defer_s=600)
    statuses = [await (await client.job(job.job_id)).status() for job in (upload, flags, later)]
    assert statuses == [JobStatus.queued, JobStatus.queued, JobStatus.deferred]
    assert await (await client.job("no-such-job")).status() is JobStatus.not_found
    async with running_worker(worker_settings(settings)):
        with pytest.raises(JobFailedError, match="MissingOriginalError"):
            await (await client.job(upload.job_id)).result(timeout=30, poll_delay=0.05)
    assert await (await client.job(upload.job_id)).status() is JobStatus.complete


async def test_transient_failure_is_retried_then_given_up_with_a_reason(settings: Settings) -> None:
    settings = settings.replace(max_tries=3)
    filename, ext = images.jpeg(settings.storage_path, "t.jpg", 400, 300)
    (settings.storage_path / "thumbs").write_text("a file where the thumbs folder should be")
    async with await FleetClient.connect(settings) as client, running_worker(worker_settings(settings)):
        job = await client.render_upload(9, filename, ext)
        with pytest.raises(JobFailedError, match="gave up after 3 tries") as failure:
            await job.result(timeout=60, poll_delay=0.05)
        info = await job.result_info()
    assert failure.value.error_type == "StorageError"
    assert info is not None and info.job_try == 3


async def test_enqueue_raises_when_redis_is_down() -> None:
    with pytest.raises(EnqueueError, match="cannot reach Redis"):
        await FleetClient.connect(Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))

    with EmbeddedRedis() as server:
        client = await FleetClient.connect(Settings(redis_url=server.url, namespace="down"))
        await client.render_upload(1, "a", "jpg")  # works while Redis is up
        server.kill()
        with pytest.raises(EnqueueError, match="could not queue render_upload"):
            await client.render_upload(2, "b", "jpg")
        await client.close()


def _env(settings: Settings) -> dict[str, str]:
    return {**os.environ, **settings.as_env()}


async def test_worker_process_and_stock_arq_cli_health_check(settings: Settings, client: FleetClient) -> None:
    env = _env(settings)
    check = [sys.executable, "-m", "arq", "imgworker.worker.WorkerSettings", "--check"]
    assert subprocess.run(check, env=env, capture_output=True).returncode == 1  # no worker yet

    proc = subprocess.Popen([sys.executable, "-m", "fleet", "worker", "img"], env=env)
    try:
        key = health_check_key(queue_key(settings.namespace, Queue.IMG))
        deadline = time.monotonic() + 60
        while not await client.redis.exists(key):
            assert proc.poll() is None, "worker exited"
            assert time.monotonic() < deadline, "worker never became healthy"
            await asyncio.sleep(0.05)
        checked = subprocess.run(check, env=env, capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr

        names = [images.jpeg(settings.storage_path, f"w{i}.jpg", 1400, 900) for i in range(6)]
        jobs = [await client.render_upload(i, *name) for i, name in enumerate(names)]
        results = await asyncio.gather(*(job.result(timeout=60, poll_delay=0.05) for job in jobs))
        assert all(r["ok"] for r in results)
        assert sorted(p.name for p in (settings.storage_path / "medium").iterdir()) == [
            f"w{i}.jpg" for i in range(6)
        ]
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


async def test_lifespan_helper_opens_one_client_and_closes_it(settings: Settings) -> None:
    from types import SimpleNamespace

    from fleet.client import lifespan

    app = SimpleNamespace(state=SimpleNamespace())
    async with lifespan(settings)(app) as state:
        client = app.state.fleet
        assert state == {"fleet": client}
        job = await client.render_upload(1, "a", "jpg")
        assert await client.redis.zscore(queue_key(settings.namespace, Queue.IMG), job.job_id) is not None
        connection_id = await client.redis.client_id()
    import redis

    observer = redis.Redis.from_url(settings.redis_url or "")
    assert observer.execute_command("CLIENT", "LIST", "ID", connection_id) == b""  # closed at shutdown
