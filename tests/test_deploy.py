"""What can be checked of compose/ and the Dockerfiles without a Docker engine: every command
and healthcheck against the real CLI, every variable against the real settings, and each
compose command run outside Docker against the test services."""

from __future__ import annotations

import dataclasses
import functools
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
from fleet.settings import BOARD_NAMES, Settings, env_names
from tests.support import process, sqlite_board, wait_for

ROOT = Path(__file__).parent.parent
COMPOSE_DIR = ROOT / "compose"
FLEET_SERVICES = ("img-worker", "rating-worker")
KNOWN = env_names()
UNPINNED = {"bobbobs/iqdb-rs:latest"}
"""Images without a version tag, each with a comment in the compose file saying why."""


@dataclasses.dataclass(frozen=True)
class Tagged:
    """A value tagged ``!reset`` or ``!override``: it replaces what the earlier file had."""

    tag: str
    value: Any


class ComposeLoader(yaml.SafeLoader):
    """YAML as compose reads it: with its ``!reset`` and ``!override`` merge tags."""


def _tagged(loader: yaml.SafeLoader, node: yaml.Node) -> Tagged:
    if isinstance(node, yaml.MappingNode):
        value: Any = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node)  # type: ignore[arg-type]
    return Tagged(node.tag, value)


for _tag in ("!reset", "!override"):
    ComposeLoader.add_constructor(_tag, _tagged)


def load(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load((COMPOSE_DIR / name).read_text(), Loader=ComposeLoader)
    return loaded


def merge(base: Any, override: Any, path: tuple[str, ...] = ()) -> Any:
    """Compose's merge of two files, as far as these files need it: mappings merge, sequences
    append, ``command`` and ``healthcheck.test`` are replaced, tagged values replace."""
    if isinstance(override, Tagged):  # !override (a !reset is dropped by its mapping)
        return override.value
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if isinstance(value, Tagged) and value.tag == "!reset":
                merged.pop(key, None)
            else:
                merged[key] = merge(base[key], value, (*path, key)) if key in base else untag(value)
        return merged
    if isinstance(base, list) and isinstance(override, list) and path[-1:] not in (("command",), ("test",)):
        return base + override
    return override


def untag(value: Any) -> Any:
    if isinstance(value, Tagged):
        return value.value
    if isinstance(value, dict):
        return {k: untag(v) for k, v in value.items()}
    return value


BASE = load("docker-compose.yml")
STANDALONE = merge(BASE, load("standalone.yml"))
VARIANTS = {"attach": BASE, "standalone": STANDALONE}
CASES = [(variant, service) for variant in VARIANTS for service in FLEET_SERVICES]


def service_spec(variant: str, service: str) -> dict[str, Any]:
    spec: dict[str, Any] = VARIANTS[variant]["services"][service]
    return spec


def environment(variant: str, service: str) -> dict[str, str]:
    env = service_spec(variant, service).get("environment") or {}
    return {k: str(v) for k, v in env.items()}


def default_of(value: str) -> str:
    """``${NAME:-default}`` as compose would interpolate it with NAME unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def fleet_command(argv: list[str]) -> Any:
    assert argv[0] == "fleet", argv
    return build_parser().parse_args(argv[1:])  # SystemExit (a test failure) if the CLI refuses it


def dockerfile(name: str) -> str:
    return (ROOT / name).read_text()


def json_array(line: str) -> list[str]:
    return yaml.safe_load(line.split(" ", 1)[1] if not line.startswith("[") else line)


@pytest.mark.parametrize(("variant", "service"), CASES)
def test_compose_commands_and_healthchecks_are_real_cli_commands(variant: str, service: str) -> None:
    spec = service_spec(variant, service)
    fleet_command(spec["command"])
    health = spec["healthcheck"]["test"]
    assert health[0] == "CMD"
    assert fleet_command(health[1:]).self  # this container's workers, not every replica of the queue


@pytest.mark.parametrize(("variant", "service"), CASES)
def test_compose_environment_names_real_settings(variant: str, service: str) -> None:
    unknown = set(environment(variant, service)) - KNOWN
    assert unknown == set()
    Settings.from_env({k: default_of(v) for k, v in environment(variant, service).items()})


@pytest.mark.parametrize(("variant", "service"), CASES)
def test_stop_grace_is_longer_than_the_drain(variant: str, service: str) -> None:
    grace = int(default_of(service_spec(variant, service)["stop_grace_period"]).rstrip("s"))
    drain = environment(variant, service).get("DRAIN_GRACE_S")
    assert grace > int(default_of(drain) if drain else Settings().drain_grace_s)


@pytest.mark.parametrize("service", FLEET_SERVICES)
def test_compose_attaches_to_the_board(service: str) -> None:
    """The board's .env reaches the container whole; its storage folder, network and user are
    the board's; nothing of the board's is hard-coded here."""
    assert set(BASE["services"]) == {*FLEET_SERVICES, "web"}  # the operators' page: tests/test_web.py
    spec = service_spec("attach", service)
    assert spec["env_file"] == [{"path": "${BOARD_ENV_FILE:-../.env}", "required": True}]
    assert {"ARQ_REDIS_URL", "REDIS_URL", "DATABASE_URL", "IQDB_HOST", "IQDB_URL"}.isdisjoint(
        environment("attach", service)
    )  # these come from the board's .env, never from here
    (mount,) = spec["volumes"]
    assert mount["type"] == "bind" and mount["source"] == "${BOARD_STORAGE_PATH:-/shuushuu/images}"
    assert mount["target"] == environment("attach", service)["STORAGE_PATH"] == "/shuushuu/images"
    assert mount["bind"] == {"create_host_path": False}
    assert mount.get("read_only", False) == (service == "rating-worker")
    assert spec["networks"] == ["board"]
    assert BASE["networks"]["board"] == {"external": True, "name": "${BOARD_NETWORK:-shuushuu-api_default}"}
    assert spec["restart"] == "unless-stopped"
    assert spec["user"] == "${FLEET_UID:-10001}:${FLEET_GID:-10001}"
    assert spec["deploy"]["replicas"] == (
        "${IMG_REPLICAS:-2}" if service == "img-worker" else "${RATING_REPLICAS:-1}"
    )
    assert "build" in spec and not spec["image"].endswith(":latest")


def test_standalone_brings_every_service_and_points_the_workers_at_them() -> None:
    services = STANDALONE["services"]
    assert set(services) == {*FLEET_SERVICES, "web", "redis", "postgres", "iqdb", "prometheus", "grafana"}
    assert "appendonly" in " ".join(services["redis"]["command"]) and "healthcheck" in services["redis"]
    assert services["postgres"]["image"] == "postgres:18"
    assert services["iqdb"]["image"].startswith("bobbobs/iqdb-rs")
    assert STANDALONE["networks"]["board"] == {"name": "fleet-standalone"}  # made here, not external
    for name in FLEET_SERVICES:
        spec = services[name]
        env = environment("standalone", name)
        assert "env_file" not in spec  # reset: no board .env
        assert env["ARQ_REDIS_URL"] == env["REDIS_URL"] == "redis://redis:6379/0"
        assert (
            env["DATABASE_URL"].startswith("postgresql+asyncpg://")
            and "@postgres:5432/" in env["DATABASE_URL"]
        )
        assert (env["IQDB_HOST"], env["IQDB_PORT"], env["IQDB_URL"]) == ("iqdb", "5588", "http://iqdb:5588")
        (mount,) = spec["volumes"]
        assert mount.split(":")[:2] == ["storage", env["STORAGE_PATH"]]
        assert "redis" in spec["depends_on"]
        assert spec["restart"] == "unless-stopped" and spec["user"].startswith("${FLEET_UID")
    for name, spec in services.items():
        assert spec["networks"] == ["board"], name  # every host name above resolves
    scraped = (COMPOSE_DIR / "prometheus.yml").read_text()
    assert "img-worker" in scraped and "rating-worker" in scraped and "9100" in scraped


@pytest.mark.parametrize("variant", VARIANTS)
def test_images_are_pinned(variant: str) -> None:
    for name, spec in VARIANTS[variant]["services"].items():
        image = default_of(spec["image"])
        assert ":" in image and (not image.endswith(":latest") or image in UNPINNED), (name, image)
    text = "\n".join((COMPOSE_DIR / f).read_text() for f in ("docker-compose.yml", "standalone.yml"))
    for image in UNPINNED:  # a known exception says so next to it
        assert re.search(rf"#.*\n\s*image: {re.escape(image)}", text), image


@pytest.mark.parametrize("variant", VARIANTS)
def test_nothing_without_authentication_is_published_and_metrics_are_scrapable(variant: str) -> None:
    """IQDB (no auth) stays on the compose network; Prometheus is published on loopback only;
    the workers' /metrics listen on every interface of their container for the scrape (fleet's
    own default is loopback)."""
    services = VARIANTS[variant]["services"]
    assert "ports" not in services.get("iqdb", {})
    for name, spec in services.items():
        for port in spec.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    for name in FLEET_SERVICES:
        assert environment(variant, name)["METRICS_HOST"] == "0.0.0.0"
    assert Settings().metrics_host == "127.0.0.1"


def env_example(name: str) -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in (COMPOSE_DIR / name).read_text().splitlines()
        if line and not line.startswith("#")
    )


def test_env_example_lists_every_compose_variable() -> None:
    text = "\n".join((COMPOSE_DIR / f).read_text() for f in ("docker-compose.yml", "standalone.yml"))
    used = set(re.findall(r"\$\{([A-Z_]+)", text))
    listed = env_example(".env.example")
    assert used == set(listed)
    for name, default in re.findall(r"\$\{([A-Z_]+):-([^}]*)\}", text):
        assert listed[name] == default, name


def test_board_env_example_lists_every_setting_with_its_default() -> None:
    listed = env_example("board.env.example")
    assert set(listed) <= KNOWN
    board_names = {field: names[0] for field, names in BOARD_NAMES.items()} | {"iqdb_url": "IQDB_HOST"}
    parsed = Settings.from_env(listed)  # no two names of one setting disagree
    defaults = Settings()
    for field in dataclasses.fields(Settings):
        name = board_names.get(field.name, field.name.upper())
        assert name in listed, name
        if name == field.name.upper() and field.name not in ("database_url", "storage_path"):
            assert getattr(parsed, field.name) == getattr(defaults, field.name), name


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
    assert fleet_command(health).self
    # Any uid (compose's FLEET_UID) works: HOME and the runtime dir are under /tmp, not the user's home.
    assert re.search(r"\bHOME=/tmp\b", text) and re.search(r"\bRUNTIME_DIR=/tmp/", text)
    assert "--uid 10001 --gid 10001" in text and "chown fleet:fleet /shuushuu/images" in text


@pytest.mark.parametrize("variant", VARIANTS)
async def test_compose_commands_run_outside_docker(
    variant: str, settings: Settings, client: FleetClient, tmp_path: Path
) -> None:
    """Each fleet service's command and healthcheck, with its compose environment (and, when
    attached, the example board .env as its env_file) pointed at the test services instead
    of the compose network."""
    local = {
        "ARQ_REDIS_URL": settings.redis_url or "",
        "REDIS_URL": settings.redis_url or "",
        "DATABASE_URL": await sqlite_board(tmp_path),
        "STORAGE_PATH": str(settings.storage_path),
        "NAMESPACE": settings.namespace,
        "METRICS_PORT": "0",
        "IMG_POOL_SIZE": "1",
        "HEALTH_INTERVAL_S": "1",
    }
    board_env = env_example("board.env.example") if variant == "attach" else {}
    for service, queue in (("img-worker", Queue.IMG), ("rating-worker", Queue.DB)):
        env = {**os.environ, **board_env, **environment(variant, service), **local}
        env["RUNTIME_DIR"] = str(tmp_path / f"run-{service}")  # the container's own runtime dir
        for name in ("IQDB_URL", "IQDB_HOST", "IQDB_PORT"):  # no IQDB server here: indexing off
            env.pop(name, None)
        spec = service_spec(variant, service)
        with process([sys.executable, "-m", *spec["command"]], env, stop_s=60) as proc:
            await wait_healthy(client, queue)
            health = [sys.executable, "-m", *spec["healthcheck"]["test"][1:]]
            await wait_for(
                functools.partial(subprocess.run, health, env=env, capture_output=True, text=True),
                until=lambda checked: checked.returncode == 0,
                timeout=20,
                every=0.3,
                what=f"the {service} healthcheck to pass",
            )
        assert proc.returncode == 0, shlex.join(spec["command"])
