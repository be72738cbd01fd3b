"""The fleet CLI as a user runs it: real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fleet.services import EmbeddedRedis
from tests import images


def fleet(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleet", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_render_prints_one_json_object_per_file(storage: Path, tmp_path: Path) -> None:
    images.jpeg(storage, "2025-01-02-3.jpg", 3000, 2000)
    (tmp_path / "junk.png").write_bytes(b"\x89PNG not really")
    done = fleet("render", str(storage / "fullsize" / "2025-01-02-3.jpg"), str(tmp_path / "junk.png"),
                 "--storage", str(storage), "--json")  # fmt: skip
    assert done.returncode == 1, done.stderr
    good, bad = (json.loads(line) for line in done.stdout.splitlines())
    assert good["ok"] is True and "error" not in good
    assert good["file"].endswith("2025-01-02-3.jpg")
    assert {k: v["status"] for k, v in good["outputs"].items()} == {
        "large": "READY", "medium": "READY", "thumb": "READY"
    }  # fmt: skip
    assert (storage / good["outputs"]["thumb"]["path"]).is_file()
    assert bad["ok"] is False and "UnsupportedImageError" in bad["error"]


def test_demo_renders_every_generated_upload() -> None:
    done = fleet("demo", "--images", "16", env={k: v for k, v in os.environ.items() if k != "REDIS_URL"})
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["images"] == 16
    assert (summary["rendered"], summary["failed"]) == (16, 0)
    assert summary["renders_per_s"] > 0 and summary["seconds"] > 0
    assert summary["flags_written"] == 16
    assert summary["ratings_recalculated"] == summary["images_voted"] > 0


def test_embedded_redis_starts_and_stops() -> None:
    with EmbeddedRedis() as server:
        assert server.process is not None and server.process.poll() is None
        import redis

        assert redis.Redis.from_url(server.url).ping()
    assert server.process.poll() is not None
