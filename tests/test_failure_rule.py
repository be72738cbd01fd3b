"""The README's "How failures end" table, one row per line, against the pure failure rule
(:mod:`fleet.failures`): what ``classify`` makes of the failure, and what ``decide`` does with
it on the first try and on the last. No Redis, no worker: the rule alone.

The worker tests show the same rule acted on for real (tests/test_failures.py,
tests/test_redteam_queue.py): the README's line on a job whose key expired before it ran is
decided from Redis state (the key is gone), so only those tests hold it; the "twice for the
same original" count of a lost render lives in Redis too (tests/test_failures.py), and here
the rule gets what the img job raises on each of the two losses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from redis import exceptions as redis_errors

from fleet.db import classify_db_error
from fleet.errors import JobError, PermanentError, TransientError
from fleet.failures import (
    Done,
    GiveUp,
    RetryLater,
    RetryPolicy,
    backoff_s,
    classify,
    decide,
    unfinished_tries,
)
from fleet.registry import RENDER_UPLOAD
from fleet.settings import Settings
from fleet.worker import QUARANTINE, quarantining_deserializer
from ratingworker.iqdb import IqdbRejected

POLICY = RetryPolicy(max_tries=5, base_s=2.0, cap_s=10.0)


def _raised(act: Callable[[], Any]) -> BaseException:
    try:
        act()
    except BaseException as exc:  # noqa: BLE001 - the failure under test
        return exc
    raise AssertionError("no error raised")


@dataclass(frozen=True)
class Row:
    line: str
    """The README line, in short."""
    exc: BaseException
    permanent: bool
    error_type: str
    timeout_s: float | None = None


PERMANENT, TRANSIENT = True, False
ROWS = [
    # permanent | dead letter at once, no retries
    Row("invalid payload", _raised(lambda: RENDER_UPLOAD.decode({"image_id": -1})), PERMANENT,
        "InvalidPayloadError"),
    Row("over MAX_PIXELS", PermanentError("a.jpg: 1e9 pixels", error_type="TooManyPixelsError"), PERMANENT,
        "TooManyPixelsError"),
    Row("4xx from IQDB", IqdbRejected("IQDB POST /images/1: 400 bad image", 400), PERMANENT, "IqdbRejected"),
    Row("3xx from IQDB", IqdbRejected("IQDB POST /images/1: 301 redirect", 301), PERMANENT, "IqdbRejected"),
    # transient | retried with backoff up to MAX_TRIES, then dead letter
    Row("Redis unreachable", redis_errors.ConnectionError("refused"), TRANSIENT, "ServiceUnavailable"),
    Row("IQDB unreachable", ConnectionRefusedError(111, "refused"), TRANSIENT, "ServiceUnavailable"),
    Row("database unreachable", classify_db_error(ConnectionResetError()), TRANSIENT, "DatabaseUnavailable"),
    Row("5xx from IQDB", TransientError("IQDB POST /images/1: 503 busy"), TRANSIENT, "TransientError"),
    Row("crashed render", TransientError("a.jpg: died", error_type="RenderProcessCrashed"), TRANSIENT,
        "RenderProcessCrashed"),
    # transient | a job past its timeout is retried (plain arq fails it for good)
    Row("job past its timeout", TimeoutError(), TRANSIENT, "JobTimeout", timeout_s=30),
    # permanent | a render that loses its process twice for the same original
    Row("render lost twice", PermanentError("a.jpg: killed (the second time for this original)",
        error_type="RenderTimeout"), PERMANENT, "RenderTimeout"),
    # its own class | a medium or large that cannot be encoded or written
    Row("large not written", TransientError("large: StorageError: disk full", error_type="StorageError"),
        TRANSIENT, "StorageError"),
    Row("medium not encodable", PermanentError("medium: UnsupportedImageError: x",
        error_type="UnsupportedImageError"), PERMANENT, "UnsupportedImageError"),
    # permanent | anything unexpected: Unexpected<Type> with its message
    Row("a bug", KeyError("width"), PERMANENT, "UnexpectedKeyError"),
    Row("a cron's TimeoutError (no job timeout)", TimeoutError("slow"), PERMANENT, "UnexpectedTimeoutError"),
    # permanent | a Redis error retrying cannot cure; connection loss, timeouts, loading, a
    # read-only replica after failover, OOM are transient
    Row("WRONGTYPE", redis_errors.ResponseError("WRONGTYPE Operation"), PERMANENT, "RedisRefused"),
    Row("NOSCRIPT", redis_errors.NoScriptError("NOSCRIPT No matching script"), PERMANENT, "RedisRefused"),
    Row("wrong password", redis_errors.AuthenticationError("invalid password"), PERMANENT, "RedisRefused"),
    Row("ACL refused", redis_errors.NoPermissionError("NOPERM"), PERMANENT, "RedisRefused"),
    Row("Redis timeout", redis_errors.TimeoutError("Timeout reading"), TRANSIENT, "ServiceUnavailable"),
    Row("Redis loading", redis_errors.BusyLoadingError("LOADING"), TRANSIENT, "ServiceUnavailable"),
    Row("read-only replica", redis_errors.ReadOnlyError("READONLY"), TRANSIENT, "ServiceUnavailable"),
    Row("Redis out of memory", redis_errors.OutOfMemoryError("OOM"), TRANSIENT, "ServiceUnavailable"),
]  # fmt: skip


@pytest.mark.parametrize("row", ROWS, ids=[row.line for row in ROWS])
def test_each_line_of_the_failure_table(row: Row) -> None:
    failure = classify(row.exc, timeout_s=row.timeout_s)
    assert (failure.permanent, failure.error_type) == (row.permanent, row.error_type), failure
    message = str(failure)
    if not isinstance(row.exc, JobError):  # a foreign exception keeps its class and message
        assert message.startswith(f"{type(row.exc).__name__}: ") or row.error_type == "JobTimeout"

    first, last = decide(failure, 1, POLICY), decide(failure, POLICY.max_tries, POLICY)
    if row.permanent:
        assert first == last == GiveUp(row.error_type, message)
    else:
        assert first == RetryLater(ceiling_s=2.0)
        assert last == GiveUp(row.error_type, f"gave up after {POLICY.max_tries} tries: {message}")


def test_a_job_past_its_timeout_says_how_long_it_ran() -> None:
    assert str(classify(TimeoutError(), timeout_s=7.5)) == "ran longer than 7.5 s"


def test_a_job_that_returned_is_done_whatever_its_try() -> None:
    assert decide(None, 1, POLICY) == decide(None, POLICY.max_tries, POLICY) == Done()


def test_transient_failures_back_off_exponentially_up_to_the_cap_with_full_jitter() -> None:
    failure = TransientError("away")
    ceilings = [decide(failure, n, POLICY) for n in range(1, POLICY.max_tries)]
    assert ceilings == [RetryLater(2.0), RetryLater(4.0), RetryLater(8.0), RetryLater(10.0)]
    delays = [RetryLater(8.0).delay_s() for _ in range(200)]
    assert all(0 <= d <= 8.0 for d in delays) and len(set(delays)) > 100
    settings = Settings(retry_base_s=0.5, retry_cap_s=3.0)
    assert all(0 <= backoff_s(6, settings) <= 3.0 for _ in range(100))


def test_runs_that_never_finished_give_up_past_max_tries_before_running() -> None:
    assert unfinished_tries(POLICY.max_tries, POLICY.max_tries) is None
    overdue = unfinished_tries(POLICY.max_tries + 1, POLICY.max_tries)
    assert overdue is not None and overdue.permanent and overdue.error_type == "TooManyTries"
    assert str(overdue) == f"gave up after {POLICY.max_tries} tries that never finished"


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b'{"f": "no_such_job", "a": [{}], "k": {}, "t": 1, "et": 1}',
        b'{"f": "render_upload", "a": {}, "k": {}, "t": 1, "et": 1}',
        b'{"f": "render_upload", "a": [{}], "k": {"x": 1}, "t": 1, "et": 1}',
        b'{"f": "render_upload", "a": [{}], "k": {}, "t": 5000, "et": 1}',
        b'{"f": "render_upload", "a": [{}], "k": {}, "t": 1, "et": 1e300}',
        b'{"f": "render_upload", "a": ["' + b"x" * 2000 + b'"], "k": {}, "t": 1, "et": 1}',
    ],
    ids=[
        "not JSON",
        "unknown function",
        "args not a list",
        "kwargs",
        "try too high",
        "enqueue time",
        "long string",
    ],
)
def test_a_planted_payload_goes_to_quarantine_never_to_its_job(raw: bytes) -> None:
    job = quarantining_deserializer({"render_upload": 1})(raw)
    assert job["f"] == QUARANTINE and job["a"][0]["reason"], job


def test_an_acceptable_envelope_reaches_its_job() -> None:
    raw = b'{"f": "render_upload", "a": [{"image_id": 1}], "k": {}, "t": 1, "et": 1}'
    assert quarantining_deserializer({"render_upload": 1})(raw)["f"] == "render_upload"
