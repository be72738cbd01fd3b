"""Settings: the board's own .env names, and one clear line for every value that cannot work."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.render_settings import RenderSettings
from fleet.settings import Settings, SettingsError, env_names
from imgworker.render.options import variants_of

BOARD_ENV = {
    # As shuushuu-api's .env has them (app/config.py names).
    "REDIS_URL": "redis://cache:6379/0",
    "ARQ_REDIS_URL": "redis://queue:6379/1",
    "DATABASE_URL": "postgresql+asyncpg://shuushuu:pw@db:5432/shuushuu",
    "DATABASE_URL_SYNC": "postgresql://shuushuu:pw@db:5432/shuushuu",
    "STORAGE_PATH": "/shuushuu/images",
    "IQDB_HOST": "iqdb",
    "IQDB_PORT": "5599",
    "MAX_THUMB_WIDTH": "400",
    "MAX_THUMB_HEIGHT": "300",
    "MEDIUM_EDGE": "1200",
    "LARGE_EDGE": "2000",
    "THUMBNAIL_QUALITY": "80",
    "LARGE_QUALITY": "85",
    "ARQ_MAX_TRIES": "3",
    "ARQ_KEEP_RESULT": "600",
    "REVIEW_QUORUM": "4",
    "REVIEW_EXTENSION_DAYS": "2",
    "TASK_QUEUE_TYPE": "arq",
    "R2_ENABLED": "false",
}


def test_a_boards_env_is_read_unchanged() -> None:
    s = Settings.from_env(BOARD_ENV)
    assert s.redis_url == "redis://queue:6379/1"  # the queue's Redis, not the board's cache
    assert s.database_url == "postgresql+asyncpg://shuushuu:pw@db:5432/shuushuu"
    assert s.storage_path == Path("/shuushuu/images")
    assert s.iqdb_url == "http://iqdb:5599"
    assert (s.thumb_width, s.thumb_height, s.medium_edge, s.large_edge) == (400, 300, 1200, 2000)
    assert (s.thumb_quality, s.variant_quality, s.max_tries, s.keep_result_s) == (80, 85, 3, 600)
    assert (s.review_quorum, s.review_extension_days) == (4, 2)
    assert Settings.from_env({"IQDB_HOST": "iqdb"}).iqdb_url == "http://iqdb:5588"  # the board's default port
    assert Settings.from_env({"REDIS_URL": "redis://only:6379/2"}).redis_url == "redis://only:6379/2"


def test_two_names_of_one_setting_must_agree() -> None:
    assert Settings.from_env({"THUMB_QUALITY": "80", "THUMBNAIL_QUALITY": "80"}).thumb_quality == 80
    with pytest.raises(SettingsError, match="THUMB_QUALITY='70' and THUMBNAIL_QUALITY='80' disagree"):
        Settings.from_env({"THUMB_QUALITY": "70", "THUMBNAIL_QUALITY": "80"})
    with pytest.raises(SettingsError, match=r"IQDB_URL=.* and IQDB_HOST=.* disagree"):
        Settings.from_env({"IQDB_URL": "http://a:1", "IQDB_HOST": "b"})


def test_a_child_process_environment_overrides_inherited_board_names() -> None:
    mine = Settings(redis_url="redis://mine:1/0", thumb_quality=60)
    inherited = {**BOARD_ENV, **mine.as_env()}  # a worker started from a shell with the board's .env
    child = Settings.from_env(inherited)
    assert (child.redis_url, child.thumb_quality, child.iqdb_url) == ("redis://mine:1/0", 60, None)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("THUMB_FORMAT", "bmp", "THUMB_FORMAT='bmp' is not allowed: must be one of webp, jpeg (or jpg)"),
        ("THUMBNAIL_QUALITY", "150", "THUMBNAIL_QUALITY='150' is not allowed: must be from 1 to 100"),
        ("MAX_THUMB_WIDTH", "0", "MAX_THUMB_WIDTH='0' is not allowed: must be more than 0"),
        ("ARQ_MAX_TRIES", "three", "ARQ_MAX_TRIES='three' is not a valid int"),
        ("DATABASE_URL", "mysql://u:secret@db/board", "use mysql+aiomysql://"),
        ("DATABASE_URL", "postgresql://u:secret@db/board", "use postgresql+asyncpg://"),
        ("REDIS_URL", "http://u:secret@redis:6379", "must be a URL starting redis:// or rediss://"),
        ("LOG_FORMAT", "xml", "must be one of auto, console, json"),
        ("REVIEW_EVERY_S", "7", "a divisor of a minute, an hour or a day"),
        ("NAMESPACE", "a b", "letters, digits"),
    ],
)
def test_a_bad_value_is_refused_naming_the_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({variable: value})
    assert message in str(refused.value)
    assert "secret" not in str(refused.value)  # a password in a URL is never printed


def test_jpg_is_the_boards_spelling_of_jpeg() -> None:
    assert Settings.from_env({"THUMB_FORMAT": "jpg"}).thumb_format == "jpeg"
    assert Settings(thumb_format="JPG").thumb_format == "jpeg"


def test_every_variable_fleet_reads_is_listed() -> None:
    names = env_names()
    assert {"ARQ_REDIS_URL", "IQDB_HOST", "IQDB_PORT", "MAX_THUMB_WIDTH", "THUMBNAIL_QUALITY"} <= names
    assert {"REDIS_URL", "THUMB_WIDTH", "ADMIN_ACTION_RETENTION_DAYS"} <= names


def _fleet(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k.upper() not in env_names()}
    return subprocess.run(
        [sys.executable, "-m", "fleet", *args], env={**clean, **env}, capture_output=True, text=True, cwd=cwd
    )


def test_every_command_refuses_a_bad_setting_in_one_line() -> None:
    for args in (["--help"], ["status"], ["worker", "img"], ["cron", "prune_admin_actions"]):
        done = _fleet(*args, env={"THUMB_FORMAT": "jpg2"})
        assert done.returncode == 2, (args, done.stdout)
        allowed = "must be one of webp, jpeg (or jpg), png, gif, avif"
        assert done.stderr.strip().splitlines() == [
            f"fleet: setting THUMB_FORMAT='jpg2' is not allowed: {allowed}"
        ], args


def test_the_boards_env_file_is_read_and_set_variables_win(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text('# the board\'s .env\nTHUMBNAIL_QUALITY=150\nARQ_REDIS_URL="redis://queue:6379/1"\n')
    done = _fleet("--env-file", str(env_file), "status", env={})
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "fleet: setting THUMBNAIL_QUALITY='150' is not allowed: must be from 1 to 100"
    )
    # A variable set in the environment wins over the file; the file's ARQ_REDIS_URL is used
    # (a closed port: the one-line Redis error names it, password-free).
    from fleet.services import free_port

    env_file.write_text(f"THUMBNAIL_QUALITY=150\nARQ_REDIS_URL=redis://127.0.0.1:{free_port()}/1\n")
    done = _fleet("--env-file", str(env_file), "health", env={"THUMBNAIL_QUALITY": "70"})
    assert done.returncode != 0
    assert "THUMBNAIL_QUALITY" not in done.stderr
    assert "127.0.0.1" in done.stderr and "/1" in done.stderr
    missing = _fleet("--env-file", str(tmp_path / "nope.env"), "status", env={})
    assert missing.returncode == 2 and "nope.env does not exist" in missing.stderr


# --- the render settings: one object, every field in the fingerprint ---------------------------


def _changed(value: object) -> object:
    """Another value of ``value``'s type (a bool flips, a number grows, a format changes)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    assert isinstance(value, str), value
    return "png" if value != "png" else "webp"


def test_every_render_setting_is_in_the_fingerprint_the_variants_and_the_names() -> None:
    """A knob the fingerprint missed would let `fleet rethumb` skip stale outputs as current;
    one the variants missed would be a setting that changes nothing."""
    base = RenderSettings()
    for f in dataclasses.fields(RenderSettings):
        other = dataclasses.replace(base, **{f.name: _changed(getattr(base, f.name))})
        assert other.fingerprint() != base.fingerprint(), f.name
        assert variants_of(other) != variants_of(base), f.name
        assert other.by_name() != base.by_name(), f.name


def test_a_field_added_to_the_render_settings_changes_the_fingerprint() -> None:
    wider = dataclasses.make_dataclass(
        "WiderSettings",
        [("webp_effort", int, dataclasses.field(default=4))],
        bases=(RenderSettings,),
        frozen=True,
    )
    assert wider().fingerprint() != RenderSettings().fingerprint()


def test_the_default_fingerprint_is_the_one_bulk_runs_already_hold() -> None:
    """Run ids and settings times are keyed on it: the value it had before RenderSettings
    existed, so a run interrupted before an upgrade resumes after it."""
    assert Settings().render.fingerprint() == "50561c349448"
    assert Settings(iqdb_url="http://iqdb:5588").render.fingerprint() == "863c23ba1c6f"


def test_settings_build_the_render_settings_from_the_fields_of_their_names() -> None:
    assert Settings().render == RenderSettings()  # one home for the defaults
    for f in dataclasses.fields(RenderSettings):
        if f.name == "iqdb":
            assert Settings(iqdb_url="http://iqdb:5588").render.iqdb
            continue
        value = _changed(getattr(RenderSettings(), f.name))
        assert getattr(Settings(**{f.name: value}).render, f.name) == value, f.name
