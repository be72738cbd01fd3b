"""Redis faults and the wire: a restart mid-run, passwords, TLS. Each test runs its own
redis-server on a spare port (never the machine's)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import pyvips

from fleet.client import FleetClient
from fleet.connections import worker_redis_settings
from fleet.errors import EnqueueError
from fleet.processes import wait_healthy, worker_process
from fleet.registry import Queue
from fleet.services import EmbeddedRedis, free_port
from fleet.settings import Settings
from imgworker.worker import worker_settings
from tests import images
from tests.support import running_worker, wait_for


async def test_workers_ride_out_a_redis_restart_and_finish_everything(storage: Path, tmp_path: Path) -> None:
    data = tmp_path / "redis-data"
    data.mkdir()
    server = EmbeddedRedis(appendonly=True, workdir=data).start()
    settings = Settings(
        redis_url=server.url, storage_path=storage, namespace="restart", img_pool_size=2, metrics_port=0
    )
    names = [images.jpeg(storage, f"r{i}.jpg", 900, 700) for i in range(40)]
    try:
        with worker_process(["img"], settings) as worker:
            async with await FleetClient.connect(settings) as client:
                await wait_healthy(client, Queue.IMG)
                jobs = [await client.render_upload(i, *name) for i, name in enumerate(names)]
                thumbs = lambda: len(list((storage / "thumbs").glob("*.webp")))  # noqa: E731
                await wait_for(thumbs, until=lambda n: n >= 5, what="five thumbnails", every=0.02)
            server.kill()  # SIGKILL, mid-run
            # Time is the subject: an outage long enough for polls, job starts and finishes to fail.
            await asyncio.sleep(3.0)
            assert worker.poll() is None, "the worker died with Redis"
            server.start()  # same port, same AOF
            async with await FleetClient.connect(settings) as client:
                for job in jobs:
                    job._redis = client.redis
                    assert (await job.result(timeout=120, poll_delay=0.05))["ok"] is True
            assert worker.poll() is None
    finally:
        server.stop()
    for i in range(40):
        thumb = pyvips.Image.new_from_file(str(storage / "thumbs" / f"r{i}.webp"), fail_on="error")
        assert thumb.avg() > 0
    assert not list(storage.rglob(".*.tmp"))


async def test_password_protected_redis(storage: Path) -> None:
    with EmbeddedRedis(extra_args=["--requirepass", "s3cret"]) as server:
        settings = Settings(
            redis_url=f"redis://:s3cret@127.0.0.1:{server.port}/0",
            storage_path=storage,
            namespace="auth",
            metrics_port=0,  # not the default 9100: another suite on this host may hold it
        )
        images.jpeg(storage, "p.jpg", 600, 400)
        async with await FleetClient.connect(settings) as client, running_worker(worker_settings(settings)):
            job = await client.render_upload(1, "p", "jpg")
            assert (await job.result(timeout=30, poll_delay=0.02))["ok"] is True
        with pytest.raises(EnqueueError, match="cannot reach Redis") as refused:
            await FleetClient.connect(settings.replace(redis_url=f"redis://:wrong@127.0.0.1:{server.port}/0"))
        assert "wrong" not in str(refused.value)  # passwords never reach error messages


def _openssl(directory: Path) -> Callable[..., None]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: cannot make a test CA")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=directory)

    return run


def _certificates(directory: Path) -> tuple[Path, dict[str, tuple[Path, Path]]]:
    """A test CA, and two server certificates it signed: ``right`` for localhost and
    127.0.0.1, ``wrong`` for other.example (as a stolen certificate would be)."""
    run = _openssl(directory)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=fleet-test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    names = {"right": "DNS:localhost,IP:127.0.0.1", "wrong": "DNS:other.example"}
    servers = {}
    for which, alt_names in names.items():
        (directory / f"{which}.ext").write_text(f"subjectAltName={alt_names}\n")
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={alt_names.split(',')[0][4:]}",
            "-keyout", f"{which}.key", "-out", f"{which}.csr")  # fmt: skip
        run("x509", "-req", "-in", f"{which}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "1", "-extfile", f"{which}.ext", "-out", f"{which}.pem")  # fmt: skip
        servers[which] = (directory / f"{which}.pem", directory / f"{which}.key")
    return directory / "ca.pem", servers


def _tls_redis(ca: Path, cert: Path, key: Path) -> tuple[EmbeddedRedis, int]:
    tls_port = free_port()
    args = ["--port", "0", "--tls-port", str(tls_port), "--tls-cert-file", str(cert),
            "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
            "--tls-auth-clients", "no"]  # fmt: skip
    server = EmbeddedRedis(extra_args=args)
    try:
        server.start(timeout_s=5)
    except Exception as exc:  # noqa: BLE001 - only to say why the test cannot run
        pytest.skip(f"this redis-server has no TLS support: {exc}")
    return server, tls_port


async def test_tls_redis(storage: Path, tmp_path: Path) -> None:
    ca, servers = _certificates(tmp_path)
    server, tls_port = _tls_redis(ca, *servers["right"])
    try:
        url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={ca}"
        settings = Settings(redis_url=url, storage_path=storage, namespace="tls", metrics_port=0)
        images.jpeg(storage, "t.jpg", 600, 400)
        async with await FleetClient.connect(settings) as client, running_worker(worker_settings(settings)):
            job = await client.render_upload(1, "t", "jpg")
            assert (await job.result(timeout=30, poll_delay=0.02))["ok"] is True
        by_name = settings.replace(redis_url=f"rediss://localhost:{tls_port}/0?ssl_ca_certs={ca}")
        async with await FleetClient.connect(by_name) as client:
            assert await client.redis.ping()
        with pytest.raises(EnqueueError):  # TLS is verified: an untrusted server is refused
            await FleetClient.connect(settings.replace(redis_url=f"rediss://127.0.0.1:{tls_port}/0"))
    finally:
        server.stop()


async def test_tls_refuses_a_certificate_for_another_name(storage: Path, tmp_path: Path) -> None:
    """A certificate from the trusted CA, but for other.example: clients, the lazy pool of an
    API and workers all refuse it, with an error that says why."""
    ca, servers = _certificates(tmp_path)
    server, tls_port = _tls_redis(ca, *servers["wrong"])
    try:
        url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={ca}"
        settings = Settings(redis_url=url, storage_path=storage, namespace="tls", metrics_port=0)
        with pytest.raises(EnqueueError, match="mismatch") as refused:
            await FleetClient.connect(settings)
        assert "certificate is not valid for '127.0.0.1'" in str(refused.value)
        async with FleetClient.create(settings) as lazy:
            with pytest.raises(EnqueueError, match="mismatch"):
                await lazy.render_upload(1, "t", "jpg")
        assert worker_redis_settings(settings).ssl_check_hostname is True
    finally:
        server.stop()
