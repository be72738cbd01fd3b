"""Settings, the registry contract and the JSON wire format."""

from __future__ import annotations

import ast
import itertools
import pickle
from pathlib import Path

import pytest
from arq.jobs import deserialize_job_raw, serialize_job

from fleet import serializer
from fleet.errors import InvalidPayloadError, JobFailedError, PermanentError, RegistryError
from fleet.keys import job_key, queue_key
from fleet.registry import ALL_JOBS, RENDER_UPLOAD, WORKERS, Queue, RenderUpload, jobs_of
from fleet.settings import Settings
from fleet.worker import build_worker


def test_settings_read_from_environment_once_with_types() -> None:
    s = Settings.from_env(
        {"THUMB_WIDTH": "300", "THUMB_SHARPEN": "off", "STORAGE_PATH": "/srv/x", "POLL_DELAY_S": "0.1"}
    )
    assert (s.thumb_width, s.thumb_sharpen, s.storage_path, s.poll_delay_s) == (
        300,
        False,
        Path("/srv/x"),
        0.1,
    )
    assert Settings.from_env({}).redis_url is None
    with pytest.raises(ValueError, match="THUMB_HEIGHT='big'"):
        Settings.from_env({"THUMB_HEIGHT": "big"})


def test_settings_round_trip_through_a_child_environment() -> None:
    s = Settings(redis_url="redis://h:1/2", thumb_sharpen=False, img_pool_size=3)
    assert Settings.from_env(s.as_env()) == s


def test_every_job_is_registered_by_the_worker_serving_its_queue() -> None:
    from arq.utils import import_string

    served: dict[str, set[str]] = {}
    for path in WORKERS.values():
        made = import_string(path)(Settings(namespace="t"))
        for kwargs in made if isinstance(made, list) else [made]:
            served[kwargs["queue_name"]] = {f.name for f in kwargs["functions"]}
    for spec in ALL_JOBS:
        assert spec.name in served[queue_key("t", spec.queue)], spec


def test_a_worker_missing_a_job_of_its_queue_refuses_to_build() -> None:
    assert jobs_of(Queue.IMG)
    with pytest.raises(RegistryError, match="does not register"):
        build_worker(Queue.IMG, [], Settings())


def test_payloads_are_checked_against_their_declared_types() -> None:
    assert RENDER_UPLOAD.decode({"image_id": 5, "filename": "a", "ext": "jpg"}) == RenderUpload(5, "a", "jpg")
    for bad in (
        {"image_id": "5", "filename": "a", "ext": "jpg"},
        {"image_id": 5, "filename": "a"},
        {"image_id": 5, "filename": "a", "ext": "jpg", "path": "/etc"},
        {"image_id": True, "filename": "a", "ext": "jpg"},
        ["not", "an", "object"],
    ):
        with pytest.raises(InvalidPayloadError):
            RENDER_UPLOAD.decode(bad)
    with pytest.raises(TypeError):
        RENDER_UPLOAD.encode({"image_id": 1})  # type: ignore[arg-type]


def test_an_optional_field_left_unset_is_not_sent_so_an_older_worker_accepts_the_job() -> None:
    plain = RENDER_UPLOAD.encode(RenderUpload(1, "2025-01-01-1", "png"))
    assert plain == {"image_id": 1, "filename": "2025-01-01-1", "ext": "png"}
    assert RENDER_UPLOAD.decode(plain) == RenderUpload(1, "2025-01-01-1", "png", status=None)
    private = RENDER_UPLOAD.encode(RenderUpload(1, "2025-01-01-1", "png", status=0))
    assert private["status"] == 0 and RENDER_UPLOAD.decode(private).status == 0


def test_jobs_travel_as_json_not_pickle() -> None:
    raw = serialize_job("render_upload", ({"image_id": 1},), {}, 1, 123, serializer=serializer.serialize)
    assert raw.startswith(b"{") and b"render_upload" in raw
    assert deserialize_job_raw(raw, deserializer=serializer.deserialize)[0] == "render_upload"
    evil = pickle.dumps({"f": "render_upload", "a": (), "k": {}, "t": 1, "et": 1})
    with pytest.raises(Exception, match="deserialize"):
        deserialize_job_raw(evil, deserializer=serializer.deserialize)


def test_failures_travel_as_error_type_and_message() -> None:
    doc = serializer.deserialize(
        serializer.serialize({"r": PermanentError("bad", error_type="TooManyPixelsError")})
    )
    assert isinstance(doc["r"], JobFailedError)
    assert (doc["r"].error_type, doc["r"].message) == ("TooManyPixelsError", "bad")


def test_readme_documents_every_setting() -> None:
    from dataclasses import fields

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    missing = [f.name.upper() for f in fields(Settings) if f"`{f.name.upper()}`" not in readme]
    assert missing == []


def test_log_format_auto_is_json_for_machines_and_console_on_a_terminal() -> None:
    from fleet.logging import log_format

    assert Settings().log_format == "auto"
    assert (log_format("auto", tty=False), log_format("auto", tty=True)) == ("json", "console")
    assert (log_format("json", tty=True), log_format("console", tty=False)) == ("json", "console")


ROOT = Path(__file__).parent.parent
ARQ_PREFIX = job_key("").partition(":")[0] + ":"
"""What arq's own keys start with, taken from one of them."""


def key_spellings(root: Path) -> list[str]:
    """Where code other than fleet/keys.py spells a Redis key: an f-string joining a namespace
    to ``:…``, a string starting ``arq:``, or one of arq's key constants."""
    found = []
    for package in ("fleet", "imgworker", "ratingworker", "bench", "examples", "tests"):
        for path in sorted((root / package).rglob("*.py")):
            where = path.relative_to(root)
            if where == Path("fleet/keys.py"):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module == "arq.constants":
                    found.append(f"{where}:{node.lineno} imports arq.constants")
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    if node.value.startswith(ARQ_PREFIX):
                        found.append(f"{where}:{node.lineno} {node.value!r}")
                elif isinstance(node, ast.JoinedStr):
                    for value, after in itertools.pairwise(node.values):
                        named = isinstance(value, ast.FormattedValue) and "namespace" in ast.unparse(value)
                        if named and isinstance(after, ast.Constant) and str(after.value).startswith(":"):
                            found.append(f"{where}:{node.lineno} {ast.unparse(node)}")
    return found


def test_redis_keys_are_spelled_only_in_fleet_keys() -> None:
    """One home per key name: a key spelled twice drifts (``dead-index`` once was)."""
    assert key_spellings(ROOT) == []
