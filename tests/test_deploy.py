"""What can be checked of compose/ and the Dockerfiles without a Docker engine: every command
and healthcheck against the real CLI, every variable against the real settings, and each
compose command run outside Docker against the test services."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleet.cli import build_parser
from fleet.client import FleetClient
from fleet.processes import wait_healthy
from fleet.registry import Queue
from fleet.settings import Settings

ROOT = Path(__file__).parent.parent
COMPOSE = yaml.safe_load((ROOT / "compose" / "docker-compose.yml").read_text())
FLEET_SERVICES = ("img-worker", "rating-worker")
SETTINGS = {f.name.upper() for f in dataclasses.fields(Settings)}


def environment(service: str) -> dict[str, str]:
    env = COMPOSE["services"][service]["environment"]
    return {k: str(v) for k, v in env.items()}


def fleet_command(argv: list[str]) -> Any:
    assert argv[0] == "fleet", argv
    return build_parser().parse_args(argv[1:])  # SystemExit (a test failure) if the CLI refuses it


def dockerfile(name: str) -> str:
    return (ROOT / name).read_text()


def json_array(line: str) -> list[str]:
    return yaml.safe_load(line.split(" ", 1)[1] if not line.startswith("[") else line)


@pytest.mark.parametrize("service", FLEET_SERVICES)
def test_compose_commands_and_healthchecks_are_real_cli_commands(service: str) -> None:
    spec = COMPOSE["services"][service]
    fleet_command(spec["command"])
    health = spec["healthcheck"]["test"]
    assert health[0] == "CMD"
    fleet_command(health[1:])


@pytest.mark.parametrize("service", FLEET_SERVICES)
def test_compose_environment_names_real_settings(service: str) -> None:
    unknown = set(environment(service)) - SETTINGS
    assert unknown == set()
    Settings.from_env(
        {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", v) for k, v in environment(service).items()}
    )


@pytest.mark.parametrize("service", FLEET_SERVICES)
def test_stop_grace_is_longer_than_the_drain(service: str) -> None:
    grace = int(COMPOSE["services"][service]["stop_grace_period"].rstrip("s"))
    assert grace > int(environment(service)["DRAIN_GRACE_S"])


def test_compose_has_every_service_an_operator_needs() -> None:
    services = COMPOSE["services"]
    assert {"redis", "mariadb", "iqdb", "img-worker", "rating-worker", "prometheus"} <= set(services)
    assert "appendonly" in " ".join(services["redis"]["command"]) and "healthcheck" in services["redis"]
    assert (
        services["iqdb"]["image"].startswith("bobbobs/iqdb-rs") and "5588:5588" in services["iqdb"]["ports"]
    )
    assert services["img-worker"]["deploy"]["replicas"] == "${IMG_REPLICAS:-2}"
    scraped = (ROOT / "compose" / "prometheus.yml").read_text()
    assert "img-worker" in scraped and "rating-worker" in scraped and "9100" in scraped


def test_env_example_lists_every_setting_with_its_default() -> None:
    listed = dict(
        line.split("=", 1)
        for line in (ROOT / "compose" / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    defaults = Settings()
    for field in dataclasses.fields(Settings):
        name = field.name.upper()
        assert name in listed, name
        value = getattr(defaults, field.name)
        if value is not None:
            assert Settings.from_env({name: listed[name]}) == defaults.replace(**{field.name: value}), name


IMAGES = [("Dockerfile.img", "--extra img", "worker img"), ("Dockerfile.rating", None, "worker light")]


@pytest.mark.parametrize(("name", "extra", "command"), IMAGES)
def test_dockerfiles(name: str, extra: str | None, command: str) -> None:
    text = dockerfile(name)
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(stages) == 2 and all(s.startswith("python:3.12-slim") for s in stages)  # multi-stage
    assert "uv.lock" in text and "uv sync --frozen --no-dev" in text
    assert ("--extra img" in text) == (extra is not None)  # only the img image gets libvips
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1] not in ("root", "0")
    cmd = json_array(re.findall(r"^CMD (.+)$", text, re.M)[-1])
    assert " ".join(cmd[1:]) == command
    fleet_command(cmd)
    health = json_array(re.findall(r"HEALTHCHECK .*CMD (\[.+\])$", text, re.M)[-1])
    fleet_command(health)


async def test_compose_commands_run_outside_docker(
    settings: Settings, client: FleetClient, tmp_path: Path
) -> None:
    """Each fleet service's command and healthcheck, with its compose environment pointed at
    the test services instead of the compose network."""
    from fleet import db

    local = {
        "REDIS_URL": settings.redis_url or "",
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'board.sqlite3'}",
        "STORAGE_PATH": str(settings.storage_path),
        "NAMESPACE": settings.namespace,
        "METRICS_PORT": "0",
        "IMG_POOL_SIZE": "1",
        "HEALTH_INTERVAL_S": "1",
    }
    engine = db.create_engine(Settings(database_url=local["DATABASE_URL"]))
    await db.create_schema(engine)
    await engine.dispose()
    for service, queue in (("img-worker", Queue.IMG), ("rating-worker", Queue.DB)):
        env = {**os.environ, **environment(service), **local}
        env.pop("IQDB_URL")  # no IQDB server here: indexing off
        spec = COMPOSE["services"][service]
        proc = subprocess.Popen([sys.executable, "-m", *spec["command"]], env=env)
        try:
            await wait_healthy(client, queue)
            health = spec["healthcheck"]["test"][1:]
            deadline = asyncio.get_running_loop().time() + 20
            while True:
                checked = subprocess.run(
                    [sys.executable, "-m", *health], env=env, capture_output=True, text=True
                )
                if checked.returncode == 0:
                    break
                assert asyncio.get_running_loop().time() < deadline, checked.stdout + checked.stderr
                await asyncio.sleep(0.3)
        finally:
            proc.terminate()
            assert proc.wait(60) == 0, shlex.join(spec["command"])
