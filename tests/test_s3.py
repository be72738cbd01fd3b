"""Originals and outputs in an S3-compatible bucket (STORAGE_URL=s3://BUCKET).

The bucket is real S3 protocol on loopback: moto's standalone server (``python -m moto.server``),
started by the test, with signed requests from obstore as against R2 or MinIO.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import obstore
import pytest
import pyvips

from bench.iqdb_server import IqdbServer, fake_hash
from bench.s3 import MotoServer, moto_server, new_bucket
from fleet import health
from fleet.bulk import BulkRun, Selection, rethumb
from fleet.client import FleetClient
from fleet.db import create_engine, create_schema
from fleet.db import images as images_table
from fleet.errors import FleetError, JobFailedError
from fleet.keys import queue_key, render_settings_key
from fleet.processes import start_worker, wait_healthy
from fleet.registry import Queue
from fleet.services import free_port
from fleet.settings import Settings
from imgworker.config import render_options, render_storage
from imgworker.render import RenderRequest, render
from imgworker.render.storage import BucketConfig, ObjectStore
from imgworker.worker import worker_settings as img_worker_settings
from ratingworker.worker import db_worker_settings, iqdb_worker_settings
from tests import images
from tests.board import add_images, row
from tests.support import running_worker, wait_for
from tests.test_bulk import counting


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    """One server for this module's tests (a fresh bucket each)."""
    with moto_server() as server:
        yield server


@pytest.fixture(scope="module")
def s3_endpoint(moto: MotoServer) -> str:
    return moto.endpoint


@pytest.fixture
def bucket(s3_endpoint: str) -> ObjectStore:
    """A fresh bucket per test."""
    return new_bucket(s3_endpoint, f"fleet-{uuid.uuid4().hex[:12]}")


def upload_original(bucket: ObjectStore, scratch: Path, name: str, image: Any) -> tuple[str, str]:
    """Write an original as the board stores it, under fullsize/ in the bucket."""
    filename, ext = images.write(scratch, name, image)
    data = (scratch / "fullsize" / f"{filename}.{ext}").read_bytes()
    obstore.put(bucket.client, f"fullsize/{filename}.{ext}", data)
    return filename, ext


def keys(bucket: ObjectStore) -> dict[str, int]:
    """Every object in the bucket, with its size."""
    return {meta["path"]: meta["size"] for batch in obstore.list(bucket.client) for meta in batch}


def whole_image(data: bytes) -> pyvips.Image:
    """Decodes every pixel, failing on any truncation: no partial object passes."""
    image = pyvips.Image.new_from_buffer(data, "", fail_on="warning")
    image.avg()
    return image


def read(bucket: ObjectStore, key: str) -> bytes:
    return bytes(obstore.get(bucket.client, key).bytes())


def test_a_render_reads_the_original_from_the_bucket_and_puts_each_output(
    bucket: ObjectStore, tmp_path: Path, settings: Settings
) -> None:
    filename, ext = upload_original(bucket, tmp_path, "wide.png", images.pattern(3000, 1800))
    options = render_options(settings.replace(iqdb_url="http://127.0.0.1:1"))
    result = render(bucket, RenderRequest(1, filename, ext), options)
    assert result.ok, result.error
    expected = {f"fullsize/{filename}.png", f"thumbs/{filename}.webp", f"medium/{filename}.png"}
    expected |= {f"large/{filename}.png", f"iqdb/{filename}.jpg"}
    assert set(keys(bucket)) == expected
    thumb = whole_image(read(bucket, f"thumbs/{filename}.webp"))
    assert (thumb.width, thumb.height) == (500, 300)
    assert whole_image(read(bucket, f"large/{filename}.png")).width == 2048
    assert result.outputs["iqdb"].changed
    # Rendered again: the same bytes, reported unchanged (IQDB is told only of a change).
    again = render(bucket, RenderRequest(1, filename, ext), options)
    assert again.ok and not again.outputs["iqdb"].changed
    # With current outputs skipped, nothing is encoded: the bucket's times say they are current.
    skip = render(bucket, RenderRequest(1, filename, ext), render_options(settings, mode="missing"))
    assert skip.ok and skip.skipped and skip.outputs["large"].path == f"large/{filename}.png"


def test_a_render_makes_one_request_per_output_and_looks_first_only_at_the_iqdb_jpeg(
    moto: MotoServer, bucket: ObjectStore, tmp_path: Path, settings: Settings
) -> None:
    """One GET of the original, one PUT per output, the variants not made (no medium or large
    for a small image) removed in one request, and a HEAD only before the IQDB JPEG, whose
    ``changed`` decides whether IQDB is told."""
    filename, ext = upload_original(bucket, tmp_path, "small.png", images.pattern(900, 600))
    before = len(moto.requests(bucket.config.bucket))
    options = render_options(settings.replace(iqdb_url="http://127.0.0.1:1"))
    result = render(bucket, RenderRequest(1, filename, ext), options)
    assert result.ok, result.error
    made = moto.requests(bucket.config.bucket)[before:]
    assert sorted(made) == sorted(
        [
            ("GET", f"/{bucket.config.bucket}/fullsize/{filename}.png"),
            ("POST", f"/{bucket.config.bucket}?delete"),
            ("HEAD", f"/{bucket.config.bucket}/iqdb/{filename}.jpg"),
            ("PUT", f"/{bucket.config.bucket}/iqdb/{filename}.jpg"),
            ("PUT", f"/{bucket.config.bucket}/thumbs/{filename}.webp"),
        ]
    )


def test_settings_choose_the_bucket_and_keep_the_secret_out_of_errors(s3_endpoint: str) -> None:
    settings = Settings.from_env(
        {
            "STORAGE_URL": "s3://shuushuu-images",
            "R2_ENDPOINT": s3_endpoint,
            "R2_ACCESS_KEY_ID": "key",
            "R2_SECRET_ACCESS_KEY": "very-secret",
        }
    )
    storage = render_storage(settings)
    assert isinstance(storage, ObjectStore)
    assert storage.config.bucket == "shuushuu-images" and storage.config.endpoint == s3_endpoint
    assert "very-secret" not in repr(settings) and "very-secret" not in repr(storage.config)
    assert render_storage(Settings()) == Path("storage")
    with pytest.raises(ValueError, match="STORAGE_URL"):
        Settings.from_env({"STORAGE_URL": "/srv/images"})


def test_a_missing_original_or_bucket_fails_for_good_with_a_clear_error(
    bucket: ObjectStore, s3_endpoint: str, settings: Settings
) -> None:
    missing = render(bucket, RenderRequest(1, "2026-01-01-1", "png"), render_options(settings))
    assert (missing.error_type, missing.permanent) == ("MissingOriginalError", True)
    nowhere = ObjectStore(BucketConfig("no-such-bucket-here", s3_endpoint, "us-east-1", "test", "test"))
    result = render(nowhere, RenderRequest(1, "2026-01-01-1", "png"), render_options(settings))
    assert (result.error_type, result.permanent) == ("BucketRefusedError", True)
    assert "no-such-bucket-here" in (result.error or "") and "does not exist" in (result.error or "")


def test_wrong_credentials_fail_for_good_with_one_clear_error(settings: Settings) -> None:
    # With INITIAL_NO_AUTH_ACTION_COUNT=0 moto checks every request's key and signature.
    with moto_server(INITIAL_NO_AUTH_ACTION_COUNT="0") as server:
        wrong = ObjectStore(BucketConfig("images", server.endpoint, "us-east-1", "no-such-key", "wrong"))
        result = render(wrong, RenderRequest(1, "2026-01-01-1", "png"), render_options(settings))
    assert (result.error_type, result.permanent) == ("BucketRefusedError", True)
    assert "R2_ACCESS_KEY_ID" in (result.error or "") and "wrong" not in (result.error or "")


def test_a_bucket_server_that_is_down_is_a_transient_failure(settings: Settings) -> None:
    down = ObjectStore(
        BucketConfig("images", f"http://127.0.0.1:{free_port()}", "auto", "k", "s", retries=1, timeout_s=2)
    )
    result = render(down, RenderRequest(1, "2026-01-01-1", "png"), render_options(settings))
    assert (result.ok, result.permanent, result.error_type) == (False, False, "StorageError")
    assert "127.0.0.1" in (result.error or "")


def sixteen_originals(bucket: ObjectStore, tmp_path: Path, prefix: str) -> list[tuple[str, str]]:
    """Big enough for every variant, slow enough to render that a worker is caught holding jobs."""
    return [
        upload_original(bucket, tmp_path / "src", f"{prefix}{i:02d}.png", images.pattern(2400, 2000, seed=i))
        for i in range(16)
    ]


@contextlib.contextmanager
def two_img_workers(settings: Settings, scratch: list[Path]) -> Iterator[subprocess.Popen[bytes]]:
    """Two img worker processes on ``settings``, each with its own scratch folder (STORAGE_PATH)
    and nothing shared but Redis and the bucket; yields the first, the one to kill."""
    shared = settings.replace(
        img_pool_size=1,
        lock_ttl_s=2.0,
        health_interval_s=0.5,  # beats every 0.25 s: the test sees when the victim holds jobs
    )
    processes = [start_worker(["img"], shared.replace(storage_path=folder)) for folder in scratch]
    try:
        yield processes[0]
    finally:
        for proc in processes:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)


async def kill_once_busy(
    client: FleetClient, bucket: ObjectStore, queue: Queue, victim: subprocess.Popen[bytes]
) -> None:
    """SIGKILL ``victim`` once a thumbnail is in the bucket and it holds jobs of ``queue``: they
    must run again elsewhere (killing an idle worker would prove nothing)."""
    replica = f"{socket.gethostname()}:{victim.pid}"

    async def busy_after_a_render() -> bool:
        [info] = await health.beats(client.redis, client.settings, queue, [replica])
        return any(key.startswith("thumbs/") for key in keys(bucket)) and info.get("running", 0) > 0

    await wait_for(busy_after_a_render, what="the victim holding jobs after a render", timeout=120)
    victim.send_signal(signal.SIGKILL)
    victim.wait()


def assert_every_output_once(bucket: ObjectStore, names: list[tuple[str, str]], scratch: list[Path]) -> None:
    """Every output in the bucket once, whole at its listed size, nothing else there (no temp
    or partial object), and nothing rendered in a local folder."""
    expected = {f"{folder}/{f}.{e}" for f, e in names for folder in ("fullsize", "medium", "large")}
    expected |= {f"thumbs/{f}.webp" for f, _ in names}
    stored = keys(bucket)
    assert set(stored) == expected
    for key, size in stored.items():
        data = read(bucket, key)
        assert len(data) == size
        whole_image(data)
    for folder in scratch:
        assert not [p for p in folder.rglob("*") if p.is_file() and p.suffix in (".png", ".webp")]


async def test_two_img_workers_share_only_the_bucket_and_a_sigkill_mid_batch_loses_nothing(
    bucket: ObjectStore, settings: Settings, tmp_path: Path
) -> None:
    """The issue's "done when": two img workers with their own scratch folders and one bucket,
    one SIGKILLed mid-batch; every output is there once, whole, and nothing else is."""
    names = sixteen_originals(bucket, tmp_path, "")
    shared, scratch = in_bucket(settings, bucket), [tmp_path / "a", tmp_path / "b"]
    async with await FleetClient.connect(shared) as client:
        with two_img_workers(shared, scratch) as victim:
            await wait_healthy(client, Queue.IMG)
            jobs = [await client.render_upload(i + 1, *name) for i, name in enumerate(names)]
            await kill_once_busy(client, bucket, Queue.IMG, victim)
            results = [await job.result(timeout=180, poll_delay=0.05) for job in jobs]
            tries = [(await job.result_info()).job_try for job in jobs]
    assert all(result["ok"] for result in results)
    assert max(tries) >= 2  # the killed worker's jobs ran again on the other
    assert_every_output_once(bucket, names, scratch)


async def test_two_img_workers_share_only_the_bucket_and_a_sigkill_mid_bulk_run_loses_nothing(
    bucket: ObjectStore, settings: Settings, tmp_path: Path
) -> None:
    """The "done when", bulk half: the same two workers through a bulk run from the bucket's
    prefix, one SIGKILLed while it holds bulk batches; the run counts every image, every
    output is there once and whole, and nothing else is."""
    names = sixteen_originals(bucket, tmp_path, "2025-04-01-")
    shared = in_bucket(settings, bucket).replace(bulk_batch_size=2, bulk_max_jobs=2)
    scratch = [tmp_path / "a", tmp_path / "b"]
    queue = queue_key(shared.namespace, Queue.IMG_BULK)
    async with await FleetClient.connect(shared) as client:
        with two_img_workers(shared, scratch) as victim:
            await wait_healthy(client, Queue.IMG_BULK)
            run = Selection(from_prefix="fullsize/")
            feeding = asyncio.create_task(rethumb(client.redis, shared, run, poll_s=0.05))
            await kill_once_busy(client, bucket, Queue.IMG_BULK, victim)
            held = [job_id.decode() for job_id in await client.redis.zrange(queue, 0, -1)]  # running too
            summary = await asyncio.wait_for(feeding, 240)
            infos = [await (await client.job(job_id)).result_info() for job_id in held]
    assert (summary.total, summary.failed) == (16, 0)
    assert summary.rendered + summary.skipped == 16  # every image counted once
    assert max(info.job_try for info in infos if info) >= 2  # the killed worker's batches ran again
    assert_every_output_once(bucket, names, scratch)


def test_the_pixel_cap_is_checked_from_the_header_of_the_bytes_read(
    bucket: ObjectStore, tmp_path: Path, settings: Settings
) -> None:
    filename, ext = upload_original(bucket, tmp_path, "big.png", images.pattern(1200, 1000))
    options = render_options(settings.replace(max_pixels=1_000_000))
    result = render(bucket, RenderRequest(1, filename, ext), options)
    assert (result.error_type, result.permanent) == ("TooManyPixelsError", True)
    assert set(keys(bucket)) == {f"fullsize/{filename}.png"}  # nothing written


def in_bucket(settings: Settings, bucket: ObjectStore, database_url: str | None = None) -> Settings:
    """``settings`` with STORAGE_URL at ``bucket`` (and the board's database, if given)."""
    return settings.replace(
        storage_url=f"s3://{bucket.config.bucket}",
        r2_endpoint=bucket.config.endpoint,
        storage_region="us-east-1",
        r2_access_key_id="test",
        r2_secret_access_key="test",
        database_url=database_url or settings.database_url,
    )


def in_two_buckets(
    settings: Settings, public: ObjectStore, private: ObjectStore, database_url: str
) -> Settings:
    """``settings`` with the board's two buckets (STORAGE_URL=r2://) and its database."""
    return in_bucket(settings, public, database_url).replace(
        storage_url="r2://", r2_public_bucket=public.config.bucket, r2_private_bucket=private.config.bucket
    )


@pytest.fixture
async def board_sqlite(tmp_path: Path) -> str:
    """fleet's copy of the board's tables on SQLite (it has iqdb_hash and r2_location)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'board.sqlite3'}"
    engine = create_engine(Settings(database_url=url))
    await create_schema(engine)
    await engine.dispose()
    return url


async def test_the_iqdb_worker_reads_the_jpeg_the_img_worker_put_in_the_bucket(
    bucket: ObjectStore, settings: Settings, tmp_path: Path, board_sqlite: str
) -> None:
    """Nothing shared but the bucket: the light worker's STORAGE_PATH is an empty folder."""
    filename, ext = upload_original(bucket, tmp_path / "src", "2025-01-01-1.png", images.pattern(900, 600))
    engine = create_engine(Settings(database_url=board_sqlite))
    await add_images(engine, 1)
    with IqdbServer() as iqdb:
        shared = in_bucket(settings, bucket, board_sqlite).replace(iqdb_url=iqdb.url)
        light = shared.replace(storage_path=tmp_path / "light-has-no-files")
        async with (
            await FleetClient.connect(shared) as client,
            running_worker(img_worker_settings(shared), iqdb_worker_settings(light)),
        ):
            render = await client.render_upload(1, filename, ext)
            assert (await render.result(timeout=60, poll_delay=0.02))["ok"]

            async def hash_stored() -> bool:
                return (await row(engine, images_table, image_id=1))["iqdb_hash"] is not None

            await wait_for(hash_stored, what="the IQDB hash stored", timeout=60)
        posted = [r.file for r in iqdb.state.requests if r.method == "POST"]
    jpeg = read(bucket, f"iqdb/{filename}.jpg")
    assert posted == [jpeg]
    assert (await row(engine, images_table, image_id=1))["iqdb_hash"] == fake_hash(jpeg)
    await engine.dispose()


async def test_the_iqdb_worker_fails_for_good_on_a_missing_object_and_retries_a_bucket_server_down(
    bucket: ObjectStore, settings: Settings, board_sqlite: str
) -> None:
    with IqdbServer() as iqdb:
        present = in_bucket(settings, bucket, board_sqlite).replace(iqdb_url=iqdb.url, max_tries=2)
        down = present.replace(r2_endpoint=f"http://127.0.0.1:{free_port()}")
        async with await FleetClient.connect(present) as client:
            async with running_worker(iqdb_worker_settings(present)):
                missing = await client.index_iqdb(1, "iqdb/2025-01-01-9.jpg")
                with pytest.raises(JobFailedError, match=r"MissingThumbnail.*iqdb/2025-01-01-9.jpg"):
                    await missing.result(timeout=30, poll_delay=0.02)
                assert (await missing.result_info()).job_try == 1  # not retried
            async with running_worker(iqdb_worker_settings(down)):
                unreachable = await client.index_iqdb(1, "iqdb/2025-01-01-9.jpg")
                with pytest.raises(JobFailedError, match=r"gave up after 2 tries.*127\.0\.0\.1"):
                    await unreachable.result(timeout=90, poll_delay=0.02)
        assert not [r for r in iqdb.state.requests if r.method == "POST"]


async def test_the_bench_measures_renders_per_s_in_a_bucket_against_a_local_folder(
    settings: Settings, tmp_path: Path
) -> None:
    from bench import report, s3
    from fleet import corpus

    samples = corpus.plan(3, seed=5, min_edge=300, max_edge=900)
    corpus.generate(tmp_path / "corpus", samples)
    measured = await s3.main(tmp_path / "corpus", samples, settings.replace(img_pool_size=1), rounds=1)
    assert measured["renders"] == 3
    assert measured["local_renders_per_s"] > 0 and measured["s3_renders_per_s"] > 0
    ratio = measured["s3_renders_per_s"] / measured["local_renders_per_s"]
    assert measured["s3_ratio"] == pytest.approx(ratio, rel=0.02)
    assert any("S3 bucket" in line and "of local" in line for line in report._s3(measured))


async def test_the_boards_two_buckets_each_image_in_the_one_its_status_chooses(
    s3_endpoint: str, settings: Settings, tmp_path: Path, board_sqlite: str
) -> None:
    """STORAGE_URL=r2://: statuses 1, 2, -1 (and no status given) render in the public bucket,
    the others in the private one; r2_location says which, and IQDB finds each JPEG."""
    public = new_bucket(s3_endpoint, f"pub-{uuid.uuid4().hex[:12]}")
    private = new_bucket(s3_endpoint, f"priv-{uuid.uuid4().hex[:12]}")
    statuses = {1: 1, 2: -1, 3: 0, 4: -4, 5: None}  # image id -> status given to render_upload
    engine = create_engine(Settings(database_url=board_sqlite))
    await add_images(engine, *statuses)
    names = {}
    for image_id, status in statuses.items():
        where = public if status in (1, -1, None) else private
        image = images.pattern(1500, 900, seed=image_id)  # a thumbnail and a medium
        names[image_id] = upload_original(where, tmp_path / "src", f"2025-01-01-{image_id}.png", image)
    with IqdbServer() as iqdb:
        board = in_two_buckets(settings, public, private, board_sqlite).replace(iqdb_url=iqdb.url)
        workers = (img_worker_settings(board), iqdb_worker_settings(board), db_worker_settings(board))
        async with await FleetClient.connect(board) as client, running_worker(*workers):
            jobs = [await client.render_upload(i, *names[i], status=s) for i, s in statuses.items()]
            for job in jobs:
                assert (await job.result(timeout=60, poll_delay=0.02))["ok"]

            async def settled() -> bool:
                found = [await row(engine, images_table, image_id=i) for i in statuses]
                return all(r["iqdb_hash"] is not None and r["r2_location"] != 0 for r in found)

            await wait_for(settled, what="every upload settled", timeout=60)
    for image_id, status in statuses.items():
        filename, _ = names[image_id]
        home, other = (public, private) if status in (1, -1, None) else (private, public)
        assert {f"thumbs/{filename}.webp", f"medium/{filename}.png", f"iqdb/{filename}.jpg"} <= set(
            keys(home)
        )
        assert not [key for key in keys(other) if filename in key]
        found = await row(engine, images_table, image_id=image_id)
        assert found["r2_location"] == (1 if home is public else 2)
        assert found["iqdb_hash"] == fake_hash(read(home, f"iqdb/{filename}.jpg"))
    await engine.dispose()


def test_the_boards_two_buckets_need_both_names() -> None:
    with pytest.raises(ValueError, match="R2_PUBLIC_BUCKET and R2_PRIVATE_BUCKET"):
        Settings.from_env({"STORAGE_URL": "r2://", "R2_PUBLIC_BUCKET": "shuushuu-images"})
    both = Settings.from_env(
        {"STORAGE_URL": "r2://", "R2_PUBLIC_BUCKET": "pub-images", "R2_PRIVATE_BUCKET": "priv-images"}
    )
    assert (both.r2_public_bucket, both.r2_private_bucket) == ("pub-images", "priv-images")


# --- bulk runs over a bucket -----------------------------------------------------------------------


def originals_read(moto: MotoServer, bucket: ObjectStore, since: int) -> list[str]:
    """The originals GET (read) from ``bucket`` after request number ``since``."""
    return [
        path
        for method, path in moto.requests(bucket.config.bucket)[since:]
        if method == "GET" and path.startswith(f"/{bucket.config.bucket}/fullsize/")
    ]


async def test_a_prefix_run_renders_each_original_once_and_a_second_run_reads_none(
    moto: MotoServer, bucket: ObjectStore, settings: Settings, tmp_path: Path
) -> None:
    """``--from-prefix fullsize/``: every original rendered once; a second run finds every output
    current from listings alone (no original read, no HEAD); new render settings render again."""
    sizes = [(300, 200), (900, 700), (1600, 1200), (2400, 1800), (700, 2600)] * 2
    names = [
        upload_original(
            bucket, tmp_path / "src", f"2025-02-0{i % 3 + 1}-{i}.png", images.pattern(w, h, seed=i)
        )
        for i, (w, h) in enumerate(sizes, start=1)
    ]
    shared = in_bucket(settings, bucket).replace(bulk_batch_size=4, bulk_max_jobs=2)
    prefix = Selection(from_prefix="fullsize/")
    renders: collections.Counter[int] = collections.Counter()
    async with await FleetClient.connect(shared) as client:
        # These settings have been in use for a minute: a bucket's times are to the second, so
        # an output written in the second they took effect would count as stale.
        since = render_settings_key(shared.namespace, shared.render.fingerprint())
        await client.redis.set(since, time.time() - 60)
        before = len(moto.requests(bucket.config.bucket))
        async with running_worker(counting(img_worker_settings(shared), renders)):
            first = await rethumb(client.redis, shared, prefix, poll_s=0.05)
        assert (first.total, first.rendered, first.skipped, first.failed) == (10, 10, 0, 0)
        assert sorted(renders.values()) == [1] * 10  # one render of each listed position
        assert sorted(originals_read(moto, bucket, before)) == sorted(
            f"/{bucket.config.bucket}/fullsize/{f}.{e}" for f, e in names
        )
        stored = keys(bucket)
        assert {f"thumbs/{f}.webp" for f, _ in names} <= set(stored)
        assert f"large/{names[3][0]}.png" in stored and f"medium/{names[0][0]}.png" not in stored

        # The same run again, its state expired: every output is current by the listings.
        await BulkRun(client.redis, shared.namespace, prefix.run_id(shared)).delete()
        before = len(moto.requests(bucket.config.bucket))
        async with running_worker(counting(img_worker_settings(shared), renders)):
            second = await rethumb(client.redis, shared, prefix, poll_s=0.05)
            missing = await rethumb(client.redis, shared, Selection(from_prefix="fullsize/", mode="missing"))
        made = moto.requests(bucket.config.bucket)[before:]
        assert (second.skipped, second.rendered, missing.skipped, missing.rendered) == (10, 0, 10, 0)
        assert sorted(renders.values()) == [1] * 10  # nothing went to the render pool
        assert originals_read(moto, bucket, before) == []
        assert {method for method, _ in made} == {"GET"}  # listings only: no HEAD, PUT or DELETE
        # A listing per folder a batch looks at (3 batches of 4 in each run), and the feeder's.
        assert len(made) <= 2 * (3 * 5 + 1), made

        changed = shared.replace(thumb_width=300, thumb_height=300)
        async with running_worker(counting(img_worker_settings(changed), renders)):
            third = await rethumb(client.redis, changed, prefix, poll_s=0.05)
    assert (third.rendered, third.skipped) == (10, 0)
    assert sorted(renders.values()) == [2] * 10
    thumb = whole_image(read(bucket, f"thumbs/{names[2][0]}.webp"))
    assert (thumb.width, thumb.height) == (300, 225)


async def test_a_prefix_run_refuses_to_resume_over_a_changed_listing(
    bucket: ObjectStore, settings: Settings, client: FleetClient, tmp_path: Path
) -> None:
    for i in range(6):
        upload_original(bucket, tmp_path / "src", f"2025-03-01-{i}.png", images.pattern(300, 200, seed=i))
    shared = in_bucket(settings, bucket).replace(bulk_max_queued=2, bulk_batch_size=2)
    selection = Selection(from_prefix="fullsize/2025-03-")
    run = BulkRun(client.redis, shared.namespace, selection.run_id(shared))
    feeding = asyncio.create_task(rethumb(client.redis, shared, selection, poll_s=0.05))  # no worker

    async def topped_up() -> bool:
        return int((await run.state()).get("fed", 0)) >= 2

    await wait_for(topped_up, what="the queue topped up", timeout=30)
    feeding.cancel()
    with pytest.raises(asyncio.CancelledError):
        await feeding
    assert int((await run.state())["total"]) == 6
    upload_original(bucket, tmp_path / "src", "2025-03-01-10.png", images.pattern(300, 200))
    with pytest.raises(FleetError, match=r"fullsize/2025-03- changed since run .* --force"):
        await rethumb(client.redis, shared, selection, resume=True, poll_s=0.05)


async def test_a_prefix_needs_a_bucket_and_the_originals_folder(
    settings: Settings, bucket: ObjectStore, client: FleetClient
) -> None:
    with pytest.raises(FleetError, match=r"STORAGE_URL is not one .* --from-dir"):
        await rethumb(client.redis, settings, Selection(from_prefix="fullsize/"))
    with pytest.raises(FleetError, match=r"not under fullsize/"):
        await rethumb(client.redis, in_bucket(settings, bucket), Selection(from_prefix="thumbs/"))


async def test_the_boards_two_buckets_in_a_bulk_run_each_image_rendered_in_its_own(
    s3_endpoint: str, settings: Settings, tmp_path: Path, board_sqlite: str
) -> None:
    """r2://: a prefix run lists both buckets and renders each original in the one it was
    listed in; a run over the ``images`` table renders each in the one its status chooses
    and sets r2_location."""
    public = new_bucket(s3_endpoint, f"pub-{uuid.uuid4().hex[:12]}")
    private = new_bucket(s3_endpoint, f"priv-{uuid.uuid4().hex[:12]}")
    statuses = {1: 1, 2: -1, 3: 0, 4: -4, 5: 2}  # image id -> status
    engine = create_engine(Settings(database_url=board_sqlite))
    for image_id, status in statuses.items():
        await add_images(engine, image_id, status=status, ext="png")
    homes = {i: public if s in (1, 2, -1) else private for i, s in statuses.items()}
    for image_id, home in homes.items():
        upload_original(
            home, tmp_path / "src", f"2025-01-01-{image_id}.png", images.pattern(1500, 900, seed=image_id)
        )
    board = in_two_buckets(settings, public, private, board_sqlite)

    def placed() -> None:
        for image_id, home in homes.items():
            other = private if home is public else public
            thumb, medium = f"thumbs/2025-01-01-{image_id}.webp", f"medium/2025-01-01-{image_id}.png"
            assert {thumb, medium} <= set(keys(home))
            assert not [key for key in keys(other) if key.endswith(f"-{image_id}.webp")]

    async with await FleetClient.connect(board) as client:
        async with running_worker(img_worker_settings(board)):
            listed = await rethumb(client.redis, board, Selection(from_prefix="fullsize/"), poll_s=0.05)
        assert (listed.total, listed.rendered, listed.failed) == (5, 5, 0)
        placed()
        for home in (public, private):  # outputs gone: the table run must make them again
            obstore.delete(home.client, [k for k in keys(home) if not k.startswith("fullsize/")])
        async with running_worker(img_worker_settings(board), db_worker_settings(board)):
            from_table = await rethumb(client.redis, board, Selection(), engine=engine, poll_s=0.05)

            async def located() -> bool:
                found = [await row(engine, images_table, image_id=i) for i in statuses]
                return all(r["r2_location"] != 0 for r in found)

            await wait_for(located, what="r2_location written", timeout=60)
    assert (from_table.total, from_table.rendered, from_table.failed) == (5, 5, 0)
    placed()
    for image_id, home in homes.items():
        found = await row(engine, images_table, image_id=image_id)
        assert found["r2_location"] == (1 if home is public else 2)
    await engine.dispose()
