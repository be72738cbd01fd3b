"""Day-one traps of a first-time operator, each run as the operator runs it: real commands in
real processes, on a clone with nothing set."""

from __future__ import annotations

import argparse
import ast
import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.services import free_port, redis_record
from fleet.settings import Settings, env_names
from tests.support import fleet_command, process, wait_for

ROOT = Path(__file__).parent.parent


def bare_env(**variables: str) -> dict[str, str]:
    """The environment of a shell with no fleet (or board) variable set, plus ``variables``."""
    clean = {k: v for k, v in os.environ.items() if k not in env_names()}
    return {**clean, "METRICS_PORT": "0", **variables}


def fleet(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(fleet_command(*args), env=env, capture_output=True, text=True, timeout=timeout)


async def healthy(env: dict[str, str], queue: str) -> subprocess.CompletedProcess[str]:
    """``fleet health --queue QUEUE``, once it passes."""
    return await wait_for(
        lambda: fleet(env, "health", "--queue", queue),
        until=lambda done: done.returncode == 0,
        every=0.2,
        what=f"`fleet health --queue {queue}` to pass",
    )


async def test_every_command_finds_the_embedded_redis_the_worker_started(
    tmp_path: Path, namespace: str
) -> None:
    storage = tmp_path / "storage"
    env = bare_env(STORAGE_PATH=str(storage), NAMESPACE=namespace, HEALTH_INTERVAL_S="1")
    assert fleet(env, "status").returncode == 2  # nothing runs yet: says so, see below
    with process(fleet_command("worker", "img"), env, stop_s=60) as worker:
        ok = await healthy(env, "img")
        url = redis_record(storage).read_text().strip()
        assert url.startswith("redis://127.0.0.1:") and not url.endswith(":6379/0")
        assert f"fleet: Redis {url}" in ok.stderr  # every command names the Redis it read
        assert "img       ok   live=1" in ok.stdout
        status = fleet(env, "status", "--json")
        assert status.returncode == 0 and f"fleet: Redis {url}" in status.stderr
    assert worker.returncode == 0
    assert not redis_record(storage).exists()  # gone with the worker that started it
    after = fleet(env, "status")
    assert after.returncode == 2
    assert after.stderr.strip() == (
        f"fleet status: REDIS_URL is not set and no embedded Redis runs for STORAGE_PATH={storage} "
        "(`fleet worker` starts one there); set REDIS_URL to use another"
    )


def test_db_init_makes_the_embedded_sqlite_tables_and_nothing_else(
    tmp_path: Path, settings: Settings
) -> None:
    storage = tmp_path / "storage"
    env = bare_env(
        STORAGE_PATH=str(storage), REDIS_URL=settings.redis_url or "", NAMESPACE=settings.namespace
    )
    before = fleet(env, "rethumb", "--dry-run", "--json")
    assert before.returncode == 2
    [line] = before.stderr.strip().splitlines()[-1:]
    assert "Traceback" not in before.stderr and "no such table: images" in line and "fleet db init" in line

    made = fleet(env, "db", "init")
    assert made.returncode == 0 and "tables ready" in made.stdout, made.stderr
    after = fleet(env, "rethumb", "--dry-run", "--json")
    assert after.returncode == 0, after.stderr
    assert '"total": 0' in after.stdout

    board = fleet({**env, "DATABASE_URL": "postgresql+asyncpg://u:secret@db/board"}, "db", "init")
    assert board.returncode == 2 and "is not SQLite" in board.stderr and "secret" not in board.stderr


def test_an_unreachable_database_is_one_line_not_a_traceback(tmp_path: Path, settings: Settings) -> None:
    env = bare_env(
        STORAGE_PATH=str(tmp_path),
        REDIS_URL=settings.redis_url or "",
        DATABASE_URL=f"mysql+aiomysql://root:secret@127.0.0.1:{free_port()}/board",
    )
    done = fleet(env, "rethumb", "--dry-run", "--json")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("fleet rethumb: database: ") and "Traceback" not in done.stderr
    assert "secret" not in done.stderr and "***@127.0.0.1" in lines[-1]


@pytest.mark.parametrize("reachable", [True, False])
async def test_a_light_replica_whose_database_is_unreachable_is_not_healthy(
    tmp_path: Path, settings: Settings, reachable: bool
) -> None:
    database = (
        f"sqlite+aiosqlite:///{tmp_path / 'board.sqlite3'}"
        if reachable
        else f"mysql+aiomysql://root@127.0.0.1:{free_port()}/board"
    )
    env = bare_env(
        STORAGE_PATH=str(tmp_path),
        REDIS_URL=settings.redis_url or "",
        NAMESPACE=settings.namespace,
        DATABASE_URL=database,
        HEALTH_INTERVAL_S="1",
        RUNTIME_DIR=str(tmp_path / "runtime"),
    )
    with process(fleet_command("worker", "db"), env, stop_s=60):

        async def db_health(said: str) -> subprocess.CompletedProcess[str]:
            return await wait_for(
                lambda: fleet(env, "health", "--queue", "db"),
                until=lambda done: said in done.stdout,
                every=0.2,
                what=f"`fleet health --queue db` to say {said}",
            )

        live = await db_health("live=1")
        if reachable:
            assert live.returncode == 0 and "troubled" not in live.stdout
            assert fleet(env, "health", "--self").returncode == 0
        else:
            failing = await db_health("troubled=")
            assert failing.returncode == 1
            assert "db        FAIL live=1" in failing.stdout and "database unreachable" in failing.stdout
            own = fleet(env, "health", "--self")
            assert own.returncode == 1 and "database unreachable" in own.stdout


def test_a_command_loads_only_its_own_plugin() -> None:
    from fleet.cli import CORE_COMMANDS, build_parser

    [commands] = [
        a for a in build_parser(plugins=False)._actions if isinstance(a, argparse._SubParsersAction)
    ]
    assert set(commands.choices) == set(CORE_COMMANDS)

    def loaded_for(command: str) -> list[str]:
        code = (
            "import sys, fleet.cli as c; c.build_parser(plugins=c._plugins_for(sys.argv[1])); "
            "print(sorted(m for m in ('imgworker', 'bench') if m in sys.modules))"
        )
        done = subprocess.run([sys.executable, "-c", code, command], capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 0, done.stderr
        return list(ast.literal_eval(done.stdout.strip()))

    assert loaded_for("health") == []  # the container healthcheck pays for no plugin
    assert loaded_for("render") == ["imgworker"]
    assert loaded_for("rendr") == ["bench", "imgworker"]  # a typo: the usage lists every command


async def test_a_dead_letter_is_one_log_line_and_a_sigterm_no_sigusr1_noise(
    tmp_path: Path, settings: Settings
) -> None:
    from fleet.client import FleetClient
    from fleet.errors import JobFailedError

    env = bare_env(
        STORAGE_PATH=str(tmp_path),
        REDIS_URL=settings.redis_url or "",
        NAMESPACE=settings.namespace,
        LOG_FORMAT="console",
        RUNTIME_DIR=str(tmp_path / "runtime"),
    )
    assert fleet(env, "db", "init").returncode == 0
    stderr = tmp_path / "worker.stderr"
    with (
        stderr.open("w") as err,
        process(fleet_command("worker", "light"), env, stderr=err, stop_s=60) as worker,
    ):
        await healthy(env, "db")
        async with await FleetClient.connect(settings) as client:
            job = await client.write_variant_flags(404, medium=1, large=1)  # no such image: dead letter
            with pytest.raises(JobFailedError):
                await job.result(timeout=30, poll_delay=0.05)
    log = stderr.read_text()
    assert worker.returncode == 0, log
    assert "job_dead_lettered" in log and "UnknownImage" in log
    assert "Traceback" not in log
    assert "SIGUSR1" not in log


async def test_two_workers_on_one_metrics_port_fail_loudly(tmp_path: Path, settings: Settings) -> None:
    port = str(free_port())
    env = bare_env(
        STORAGE_PATH=str(tmp_path), REDIS_URL=settings.redis_url or "", NAMESPACE=settings.namespace,
        METRICS_PORT=port, RUNTIME_DIR=str(tmp_path / "runtime"), DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/b.db",
    )  # fmt: skip
    with process(fleet_command("worker", "db"), env, stop_s=60):
        await healthy(env, "db")
        second = fleet(env, "worker", "iqdb")
        assert second.returncode != 0  # not a worker running on, silently unscraped
        assert f"METRICS_PORT={port} cannot be served" in second.stderr


async def test_images_dead_lettered_inside_a_bulk_batch_are_counted(settings: Settings) -> None:
    from fleet import metrics
    from fleet.client import FleetClient
    from fleet.registry import RENDER_BATCH, RenderBatch
    from imgworker.worker import worker_settings
    from tests import images
    from tests.support import running_worker

    good = images.jpeg(settings.storage_path, "good.jpg", 300, 200)
    (settings.storage_path / "fullsize" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg at all")
    counter = metrics.JOBS_DEAD_LETTERED.labels("img-bulk", "render_batch")
    before = counter._value.get()
    batch = RenderBatch("abc123", [1, 2], [good[0], "broken"], ["jpg", "jpg"], [], mode="all", with_db=False)
    async with await FleetClient.connect(settings) as client, running_worker(worker_settings(settings)):
        job = await client.enqueue(RENDER_BATCH, batch)
        counts = await job.result(timeout=60, poll_delay=0.05)
    assert (counts["rendered"], counts["failed"]) == (1, 1)
    assert counter._value.get() == before + 1


@pytest.mark.parametrize("variants", ["thumbnail", "bogus,nothing", "thumb,large,"])
def test_a_typo_in_variants_is_an_error_listing_the_valid_ones(variants: str, tmp_path: Path) -> None:
    done = fleet(
        bare_env(STORAGE_PATH=str(tmp_path)), "rethumb", "--ids", "1-2", "--variants", variants, "--json"
    )
    if variants == "thumb,large,":  # a trailing comma is no typo
        assert "unknown variant" not in done.stderr
        return
    assert done.returncode == 2
    assert "unknown variant" in done.stderr and "use thumb, medium, large" in done.stderr


async def test_the_readme_example_api_commands_work_as_written(tmp_path: Path) -> None:
    """The README's block, line by line, in an empty folder with nothing set (the repository
    on PYTHONPATH for `examples`, the venv's commands by absolute path, a free port)."""
    import httpx

    from tests import images

    readme = (ROOT / "README.md").read_text()
    block = readme.split("```sh\n.venv/bin/fleet db init", 1)[1].split("```", 1)[0]
    lines = [".venv/bin/fleet db init" + block.splitlines()[0], *block.splitlines()[1:]]
    commands = [line.split("#", 1)[0].strip() for line in lines if line.strip()]
    assert commands[0] == ".venv/bin/fleet db init" and commands[1] == ".venv/bin/fleet worker img light &"
    assert commands[2].startswith("EXAMPLE_API_TOKEN=secret .venv/bin/uvicorn examples.board_api:app")
    venv = str(Path(sys.executable).parent.parent)
    env = bare_env(PYTHONPATH=str(ROOT), IMG_POOL_SIZE="1")
    port = free_port()

    def shell(command: str) -> str:
        return command.replace(".venv/", f"{venv}/")

    assert subprocess.run(shell(commands[0]), shell=True, cwd=tmp_path, env=env).returncode == 0

    def start(command: str) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
        """The shell runs it in a session of its own: stopped with all it started."""
        return process(shell(command), env, shell=True, cwd=tmp_path, start_new_session=True, stop_s=60)

    with start(commands[1].rstrip("& ")):
        await healthy({**env, "STORAGE_PATH": str(tmp_path / "storage")}, "img")
        with start(commands[2] + f" --port {port}") as api:
            images.jpeg(tmp_path, "photo.jpg", 900, 600)
            photo = (tmp_path / "fullsize" / "photo.jpg").read_bytes()
            async with httpx.AsyncClient(timeout=30) as http:

                async def upload() -> httpx.Response | None:
                    """As `curl -H 'Authorization: Bearer secret' -F file=@photo.jpg …/images`."""
                    assert api.poll() is None, "the API exited"
                    try:
                        return await http.post(
                            f"http://127.0.0.1:{port}/images",
                            headers={"Authorization": "Bearer secret"},
                            files={"file": ("photo.jpg", photo, "image/jpeg")},
                        )
                    except httpx.TransportError:
                        return None

                answer = await wait_for(upload, every=0.2, what="the API to answer")
            assert answer.status_code == 201, answer.text
            thumb = tmp_path / "storage" / "thumbs" / f"{answer.json()['filename']}.webp"
            # Rendered by the worker the README started.
            await wait_for(thumb.exists, every=0.1, what="the upload's thumbnail")


def test_fleet_render_never_overwrites_a_live_original_unless_asked(tmp_path: Path) -> None:
    from tests import images

    archive = tmp_path / "archive"
    images.jpeg(archive, "prog.jpg", 400, 300)
    live = (archive / "fullsize" / "prog.jpg").read_bytes()
    other = tmp_path / "other"
    other.mkdir()
    (other / "prog.jpg").write_bytes(images.pattern(320, 200).pngsave_buffer())  # another picture
    env = bare_env(STORAGE_PATH=str(archive))
    refused = fleet(env, "render", str(other / "prog.jpg"))
    assert refused.returncode == 1
    assert "fullsize/prog.jpg" in refused.stdout and "--replace" in refused.stdout
    assert (archive / "fullsize" / "prog.jpg").read_bytes() == live  # the live original is intact
    same = tmp_path / "same"
    same.mkdir()
    (same / "prog.jpg").write_bytes(live)  # the very same bytes: nothing to protect
    assert fleet(env, "render", str(same / "prog.jpg")).returncode == 0
    replaced = fleet(env, "render", "--replace", str(other / "prog.jpg"))
    assert replaced.returncode == 0, replaced.stdout + replaced.stderr
    assert (archive / "fullsize" / "prog.jpg").read_bytes() == (other / "prog.jpg").read_bytes()


def test_fleet_render_reports_a_missing_file_and_goes_on(tmp_path: Path) -> None:
    from tests import images

    images.jpeg(tmp_path, "a.jpg", 300, 200)
    images.jpeg(tmp_path, "b.jpg", 300, 200)
    files = [str(tmp_path / "fullsize" / n) for n in ("a.jpg", "missing.jpg", "b.jpg")]
    done = fleet(bare_env(STORAGE_PATH=str(tmp_path)), "render", *files)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    lines = done.stdout.strip().splitlines()
    assert [line.split(":", 1)[0] for line in lines] == files
    assert " ok " in lines[0] and " ok " in lines[2] and "no such file" in lines[1]
    assert "1 of 3 failed" in done.stderr
    assert (tmp_path / "thumbs" / "b.webp").exists()


def test_the_readme_lists_every_stock_arq_worker_settings() -> None:
    """Without BulkWorkerSettings under the stock arq CLI, bulk runs wait for ever."""
    import importlib
    import re

    readme = (ROOT / "README.md").read_text()
    listed = set(re.findall(r"`arq ([a-z]+\.worker\.[A-Za-z]+)`", readme))
    exported = {
        f"{module}.{name}"
        for module in ("imgworker.worker", "ratingworker.worker")
        for name in dir(importlib.import_module(module))
        if name.endswith("WorkerSettings")
    }
    assert exported and listed == exported
