"""JSON on the wire instead of arq's default pickle.

Whoever can write to Redis could run code in a worker through a pickle; a JSON document can
only carry data. Failed jobs' exceptions travel as ``{"__error__": type, "message": text}``
and come back as :class:`fleet.errors.JobFailedError`, so ``Job.result()`` still raises.
"""

from __future__ import annotations

import json
from typing import Any

from fleet.errors import JobError, JobFailedError

_ERROR_KEY = "__error__"


def _encode_default(value: Any) -> Any:
    if isinstance(value, JobFailedError):
        return {_ERROR_KEY: value.error_type, "message": value.message}
    if isinstance(value, JobError):
        return {_ERROR_KEY: value.kind, "message": str(value)}
    if isinstance(value, BaseException):
        return {_ERROR_KEY: type(value).__name__, "message": str(value)}
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _decode_hook(obj: dict[str, Any]) -> Any:
    if _ERROR_KEY in obj and set(obj) == {_ERROR_KEY, "message"}:
        return JobFailedError(str(obj[_ERROR_KEY]), str(obj["message"]))
    return obj


def serialize(data: dict[str, Any]) -> bytes:
    return json.dumps(data, default=_encode_default, separators=(",", ":")).encode()


def deserialize(raw: bytes) -> dict[str, Any]:
    value = json.loads(raw, object_hook=_decode_hook)
    if not isinstance(value, dict):
        raise ValueError("a job document must be a JSON object")
    return value
