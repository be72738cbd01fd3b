"""Prometheus metrics: a real Prometheus server scrapes a running worker."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import httpx

from fleet.client import FleetClient
from fleet.processes import wait_healthy, worker_process
from fleet.registry import Queue
from fleet.services import free_port
from fleet.settings import Settings
from tests.support import process, sqlite_board, unavailable, wait_for


async def test_prometheus_scrapes_the_true_ready_depth(
    settings: Settings, client: FleetClient, tmp_path: Path
) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        unavailable("prometheus is not installed (Debian: apt-get install prometheus)")
    metrics_port, prometheus_port = free_port(), free_port()
    settings = settings.replace(
        metrics_port=metrics_port,
        health_interval_s=0.5,
        database_url=await sqlite_board(tmp_path),
    )
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: fleet\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n"
    )
    command = [
        prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{prometheus_port}",
    ]  # fmt: skip
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    # Every replica reports every queue's depth: a light worker is enough.
    with worker_process(["light"], settings), process(command, dict(os.environ), **quiet):
        await wait_healthy(client, Queue.DB)
        for i in range(7):  # no img worker: these stay ready
            await client.render_upload(i, "waiting", "jpg")
        async with httpx.AsyncClient() as http:
            own = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
            assert "fleet_jobs_started_total" in own and "process_resident_memory_bytes" in own

            async def scraped() -> str | None:
                try:
                    answer = await http.get(
                        f"http://127.0.0.1:{prometheus_port}/api/v1/query",
                        params={"query": 'fleet_queue_ready{queue="img"}'},
                    )
                    result = answer.json()["data"]["result"]
                    return str(result[0]["value"][1]) if result else None
                except (httpx.TransportError, KeyError, ValueError):
                    return None

            await wait_for(scraped, until=lambda value: value == "7", every=0.5, what="Prometheus to read 7")
