"""Redis faults and the wire: a restart mid-run, passwords, TLS. Each test runs its own
redis-server on a spare port (never the machine's)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest
import pyvips

from fleet.client import FleetClient
from fleet.errors import EnqueueError
from fleet.processes import start_worker, wait_healthy
from fleet.registry import Queue
from fleet.services import EmbeddedRedis, free_port
from fleet.settings import Settings
from imgworker.worker import worker_settings
from tests import images
from tests.conftest import running_worker


async def test_workers_ride_out_a_redis_restart_and_finish_everything(storage: Path, tmp_path: Path) -> None:
    data = tmp_path / "redis-data"
    data.mkdir()
    server = EmbeddedRedis(appendonly=True, workdir=data).start()
    settings = Settings(redis_url=server.url, storage_path=storage, namespace="restart", img_pool_size=2)
    names = [images.jpeg(storage, f"r{i}.jpg", 900, 700) for i in range(40)]
    worker = start_worker(["img"], settings)
    try:
        async with await FleetClient.connect(settings) as client:
            await wait_healthy(client, Queue.IMG)
            jobs = [await client.render_upload(i, *name) for i, name in enumerate(names)]
            while len(list((storage / "thumbs").glob("*.webp"))) < 5:
                await asyncio.sleep(0.02)
        server.kill()  # SIGKILL, mid-run
        await asyncio.sleep(3.0)  # long enough for polls, job starts and finishes to fail
        assert worker.poll() is None, "the worker died with Redis"
        server.start()  # same port, same AOF
        async with await FleetClient.connect(settings) as client:
            for job in jobs:
                job._redis = client.redis
                assert (await job.result(timeout=120, poll_delay=0.05))["ok"] is True
        assert worker.poll() is None
    finally:
        worker.terminate()
        worker.wait(30)
        server.stop()
    for i in range(40):
        thumb = pyvips.Image.new_from_file(str(storage / "thumbs" / f"r{i}.webp"), fail_on="error")
        assert thumb.avg() > 0
    assert not list(storage.rglob(".*.tmp"))


async def test_password_protected_redis(storage: Path) -> None:
    with EmbeddedRedis(extra_args=["--requirepass", "s3cret"]) as server:
        settings = Settings(
            redis_url=f"redis://:s3cret@127.0.0.1:{server.port}/0", storage_path=storage, namespace="auth"
        )
        images.jpeg(storage, "p.jpg", 600, 400)
        async with await FleetClient.connect(settings) as client, running_worker(worker_settings(settings)):
            job = await client.render_upload(1, "p", "jpg")
            assert (await job.result(timeout=30, poll_delay=0.02))["ok"] is True
        with pytest.raises(EnqueueError, match="cannot reach Redis") as refused:
            await FleetClient.connect(settings.replace(redis_url=f"redis://:wrong@127.0.0.1:{server.port}/0"))
        assert "wrong" not in str(refused.value)  # passwords never reach error messages


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: cannot make a test CA")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=directory)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=fleet-test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    )
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "1", "-out", "server.pem")  # fmt: skip
    return directory / "ca.pem", directory / "server.pem", directory / "server.key"


async def test_tls_redis(storage: Path, tmp_path: Path) -> None:
    ca, cert, key = _certificates(tmp_path)
    tls_port = free_port()
    args = ["--port", "0", "--tls-port", str(tls_port), "--tls-cert-file", str(cert),
            "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
            "--tls-auth-clients", "no"]  # fmt: skip
    server = EmbeddedRedis(extra_args=args)
    try:
        server.start(timeout_s=5)
    except Exception as exc:  # noqa: BLE001 - only to say why the test cannot run
        pytest.skip(f"this redis-server has no TLS support: {exc}")
    try:
        url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={ca}"
        settings = Settings(redis_url=url, storage_path=storage, namespace="tls")
        images.jpeg(storage, "t.jpg", 600, 400)
        async with await FleetClient.connect(settings) as client, running_worker(worker_settings(settings)):
            job = await client.render_upload(1, "t", "jpg")
            assert (await job.result(timeout=30, poll_delay=0.02))["ok"] is True
        with pytest.raises(EnqueueError):  # TLS is verified: an untrusted server is refused
            await FleetClient.connect(settings.replace(redis_url=f"rediss://127.0.0.1:{tls_port}/0"))
    finally:
        server.stop()
