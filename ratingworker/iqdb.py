"""An async client for the IQDB HTTP API (danbooru/iqdb and iqdb-rs share it).

Never blocks the event loop (httpx.AsyncClient). Network errors, timeouts and 5xx are
transient; 4xx and 3xx answers are permanent (a redirect is not followed: IQDB_URL points at
the wrong place), with the server's own error text cut short. Answers are read as a stream
and never past MAX_ANSWER_BYTES, so a broken or hostile IQDB cannot fill a worker's memory
or a job's result; the hash it returns is checked before the board stores it.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx

from fleet.errors import PermanentError, TransientError

MAX_ANSWER_BYTES = 64 * 1024
"""IQDB answers small JSON objects (a hash of about 533 characters); more is a broken server."""
MAX_ERROR_CHARS = 200
"""How much of an IQDB error text reaches an error message, a dead letter or a result."""
_HASH = re.compile(r"[\x21-\x7e]{1,1024}")
"""A plausible hash: 1 to 1024 printable ASCII characters (danbooru/iqdb's are 533)."""


class IqdbRejected(PermanentError):
    """IQDB answered a 3xx or 4xx: the same request will be refused again. ``status`` is the
    HTTP status (a 404 to a delete means the image was never indexed)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class IqdbClient:
    def __init__(self, base_url: str, timeout_s: float = 10.0) -> None:
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout_s)

    async def add(self, image_id: int, jpeg: bytes) -> str:
        """Index ``jpeg`` under ``image_id`` (replacing any entry); returns IQDB's hash."""
        answer = await self._call(
            "POST", f"/images/{image_id}", files={"file": (f"{image_id}.jpg", jpeg, "image/jpeg")}
        )
        digest = answer.get("hash") if isinstance(answer, dict) else None
        if not isinstance(digest, str):
            answered = _cut(repr(answer))
            raise PermanentError(f"IQDB answered POST /images/{image_id} without a hash: {answered}")
        if not _HASH.fullmatch(digest):
            raise PermanentError(
                f"IQDB answered POST /images/{image_id} with an implausible hash "
                f"({len(digest)} characters, not 1 to 1024 printable ones): {_cut(repr(digest))}",
                error_type="IqdbBadAnswer",
            )
        return digest

    async def delete(self, image_id: int) -> bool:
        """Remove ``image_id``; False when IQDB did not have it (404 counts as done)."""
        try:
            await self._call("DELETE", f"/images/{image_id}")
        except IqdbRejected as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        what = f"IQDB {method} {path}"
        try:
            request = self._http.build_request(method, path, **kwargs)
            response = await self._http.send(request, stream=True, follow_redirects=False)
            try:
                body, complete = await _read_capped(response)
            finally:
                await response.aclose()
        except httpx.TransportError as exc:  # connect errors, timeouts, broken connections
            raise TransientError(f"{what}: {type(exc).__name__}: {_cut(str(exc))}") from exc
        status = response.status_code
        if status >= 500:
            raise TransientError(f"{what}: {status} {_error_text(body, complete)}")
        if status >= 300:
            reason = f"{status} {_error_text(body, complete)}"
            if status < 400:
                reason = f"{status} redirect to {_cut(response.headers.get('location', '?'))} (not followed)"
            raise IqdbRejected(f"{what}: {reason}", status)
        if not complete:
            raise TransientError(f"{what}: answer over {MAX_ANSWER_BYTES} bytes", error_type="IqdbBadAnswer")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise TransientError(f"{what}: answer is not JSON") from exc

    async def aclose(self) -> None:
        await self._http.aclose()


async def _read_capped(response: httpx.Response) -> tuple[bytes, bool]:
    """At most MAX_ANSWER_BYTES of the body, and whether that was all of it."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_ANSWER_BYTES:
        return b"", False
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            return bytes(body[:MAX_ANSWER_BYTES]), False
    return bytes(body), True


def _cut(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "…"


def _error_text(body: bytes, complete: bool) -> str:
    """The server's error code or text, cut to MAX_ERROR_CHARS."""
    if not complete and not body:
        return f"(an answer over {MAX_ANSWER_BYTES} bytes)"
    try:
        answer = json.loads(body)
    except ValueError:
        return _cut(body.decode(errors="replace"))
    if isinstance(answer, dict) and "error" in answer:
        return _cut(str(answer["error"]))
    return _cut(str(answer))
