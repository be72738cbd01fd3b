"""The FastAPI example over real HTTP (uvicorn on loopback), real Redis and real workers."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from fleet import db
from fleet.services import EmbeddedRedis, free_port
from fleet.settings import Settings
from imgworker.worker import worker_settings
from ratingworker.worker import db_worker_settings
from tests import images
from tests.support import fleet_env, process, running_worker, sqlite_board, wait_for

TOKEN = "example-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@contextlib.contextmanager
def serve(settings: Settings, port: int, **extra_env: str) -> Iterator[subprocess.Popen[bytes]]:
    """The example API under uvicorn in its own process, stopped on the way out."""
    env = {**fleet_env(settings), "EXAMPLE_API_TOKEN": TOKEN, **extra_env}
    command = [sys.executable, "-m", "uvicorn", "examples.board_api:app", "--host", "127.0.0.1"]
    with process([*command, "--port", str(port)], env, cwd=Path(__file__).parent.parent) as api:
        yield api


async def up(base: str, proc: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient() as http:

        async def answers() -> bool:
            assert proc.poll() is None, "uvicorn exited"
            try:
                await http.get(f"{base}/docs")
            except httpx.TransportError:
                return False
            return True

        await wait_for(answers, timeout=30, every=0.1, what=f"the API at {base} to answer")


@pytest.fixture
async def api_settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.replace(database_url=await sqlite_board(tmp_path))


async def test_upload_vote_and_job_status_over_http(api_settings: Settings, tmp_path: Path) -> None:
    settings = api_settings
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    images.jpeg(tmp_path, "photo.jpg", 1800, 1200)
    photo = (tmp_path / "fullsize" / "photo.jpg").read_bytes()
    with serve(settings, port) as api:
        await up(base, api)
        async with (
            running_worker(worker_settings(settings), db_worker_settings(settings)),
            httpx.AsyncClient(headers=AUTH) as http,
        ):
            created = await http.post(f"{base}/images", files={"file": ("photo.jpg", photo, "image/jpeg")})
            assert created.status_code == 201, created.text
            upload = created.json()

            async def status() -> Any:
                return (await http.get(f"{base}/jobs/{upload['job_id']}")).json()

            done = await wait_for(status, until=lambda s: s["status"] == "complete", what="the upload job")
            assert done["result"]["ok"] is True
            assert (settings.storage_path / "thumbs" / f"{upload['filename']}.webp").exists()

            voted = await http.post(
                f"{base}/images/{upload['image_id']}/ratings", json={"user_id": 7, "rating": 9}
            )
            assert voted.status_code == 202, voted.text
            bad = await http.post(
                f"{base}/images/{upload['image_id']}/ratings", json={"user_id": 7, "rating": 11}
            )
            assert bad.status_code == 422
            engine = db.create_engine(settings)

            async def image() -> Any:
                async with engine.connect() as conn:
                    query = sa.select(db.images).where(db.images.c.image_id == upload["image_id"])
                    return (await conn.execute(query)).one()

            row = await wait_for(
                image, until=lambda r: r.num_ratings == 1 and r.medium == 1, what="the vote and the flags"
            )
            await engine.dispose()
            assert row.rating == 9.0 and row.large == 0  # 1800 px: medium READY, large NONE


async def test_the_api_starts_while_redis_is_down_answers_503_and_recovers(
    api_settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    images.jpeg(tmp_path, "photo.jpg", 600, 400)
    photo = (tmp_path / "fullsize" / "photo.jpg").read_bytes()
    redis = EmbeddedRedis()  # its port is chosen; the server is not started yet
    settings = api_settings.replace(redis_url=redis.url)
    with serve(settings, port) as api:
        await up(base, api)  # the API started although Redis is down
        async with httpx.AsyncClient(timeout=30, headers=AUTH) as http:
            refused = await http.post(f"{base}/images", files={"file": ("photo.jpg", photo, "image/jpeg")})
            assert refused.status_code == 503, refused.text
            assert f"127.0.0.1:{redis.port}" not in refused.text  # no internal address in the answer
            engine = db.create_engine(settings)
            async with engine.connect() as conn:
                count = sa.select(sa.func.count()).select_from(db.images)
                assert (await conn.execute(count)).scalar_one() == 0
            await engine.dispose()
            assert list((settings.storage_path / "fullsize").iterdir()) == []
            with redis:  # Redis comes up: the same process queues uploads again
                accepted = await http.post(
                    f"{base}/images", files={"file": ("photo.jpg", photo, "image/jpeg")}
                )
                assert accepted.status_code == 201, accepted.text


def high_water_kib(pid: int) -> int:
    """The process's peak resident memory (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def test_writes_need_the_token_uploads_are_capped_streamed_and_stored_readable(
    api_settings: Settings, tmp_path: Path
) -> None:
    settings = api_settings
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    images.jpeg(tmp_path, "photo.jpg", 600, 400)
    photo = (tmp_path / "fullsize" / "photo.jpg").read_bytes()
    with serve(settings, port, MAX_IMAGE_SIZE=str(1 << 20)) as api:
        await up(base, api)
        async with httpx.AsyncClient(timeout=120) as http:
            files = {"file": ("photo.jpg", photo, "image/jpeg")}
            assert (await http.post(f"{base}/images", files=files)).status_code == 401
            wrong = {"Authorization": "Bearer not-it"}
            assert (await http.post(f"{base}/images", files=files, headers=wrong)).status_code == 401
            vote = {"user_id": 7, "rating": 9}
            assert (await http.post(f"{base}/images/1/ratings", json=vote)).status_code == 401

            before = high_water_kib(api.pid)
            huge = b"\xff\xd8\xff" + bytes(100 << 20)  # 100 MiB against a 1 MiB cap
            over = await http.post(
                f"{base}/images", files={"file": ("huge.jpg", huge, "image/jpeg")}, headers=AUTH
            )
            assert over.status_code == 413, over.text
            grown_kib = high_water_kib(api.pid) - before
            print(f"API VmHWM grew {grown_kib} KiB for a 100 MiB upload refused with 413")
            assert grown_kib < 32 << 10, grown_kib  # streamed in chunks: not the upload's 100 MiB

            stored = await http.post(f"{base}/images", files=files, headers=AUTH)
            assert stored.status_code == 201, stored.text
        name = stored.json()["filename"]
        original = settings.storage_path / "fullsize" / f"{name}.jpg"
        assert original.read_bytes() == photo
        assert original.stat().st_mode & 0o777 == 0o644 & ~current_umask()  # workers run as another uid
        left = [p.name for p in (settings.storage_path / "fullsize").iterdir()]
        assert left == [f"{name}.jpg"], left  # the refused upload left nothing behind
        engine = db.create_engine(settings)
        async with engine.connect() as conn:
            count = sa.select(sa.func.count()).select_from(db.images)
            assert (await conn.execute(count)).scalar_one() == 1  # and no row
        await engine.dispose()


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
