"""JSON on the wire instead of arq's default pickle.

Whoever can write to Redis could run code in a worker through a pickle; a JSON document can
only carry data. Failed jobs' exceptions travel as ``{"__error__": type, "message": text}``
and come back as :class:`fleet.errors.JobFailedError`, so ``Job.result()`` still raises.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fleet.errors import JobError, JobFailedError

_ERROR_KEY = "__error__"

MAX_PAYLOAD_BYTES = 256 * 1024
"""A job document (arq's envelope and the payload) over this is refused: it would be copied into
the result, the dead letter and the logs. A bulk batch of 1,000 images is about 60 KiB."""
MAX_STRING_CHARS = 1024
"""Any string in a payload longer than this is refused (the board's stored names are at most
120 characters)."""
MAX_MESSAGE_CHARS = 2048
"""Error messages kept in results and dead letters are cut here."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def cut(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut: one huge error must
    not become a huge result, dead letter and log line."""
    if len(text) <= limit:
        return text
    cut_bytes = len(text[limit:].encode(errors="replace"))
    return f"{text[:limit]}… ({cut_bytes} bytes cut)"


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\x1b``): names and messages come from
    uploads and planted jobs, and must not drive the terminal that shows them."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


def payload_problem(data: Any, raw_size: int | None = None) -> str | None:
    """Why a payload is too big to queue or run (None if it is not): over MAX_PAYLOAD_BYTES
    serialized, or holding a string over MAX_STRING_CHARS."""
    size = raw_size if raw_size is not None else len(json.dumps(data, separators=(",", ":")).encode())
    if size > MAX_PAYLOAD_BYTES:
        return f"the job is {size} bytes, over the bound of {MAX_PAYLOAD_BYTES}"
    longest = _longest_string(data)
    if longest > MAX_STRING_CHARS:
        return f"a string of {longest} characters, over the bound of {MAX_STRING_CHARS}"
    return None


def _longest_string(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return max((max(len(str(k)), _longest_string(v)) for k, v in value.items()), default=0)
    if isinstance(value, list | tuple):
        return max((_longest_string(v) for v in value), default=0)
    return 0


def _encode_default(value: Any) -> Any:
    if isinstance(value, JobFailedError):
        return {_ERROR_KEY: value.error_type, "message": cut(value.message)}
    if isinstance(value, JobError):
        return {_ERROR_KEY: value.error_type, "message": cut(str(value))}
    if isinstance(value, BaseException):
        return {_ERROR_KEY: type(value).__name__, "message": cut(str(value))}
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
