"""An async client for the IQDB HTTP API (danbooru/iqdb and iqdb-rs share it).

Never blocks the event loop (httpx.AsyncClient). Network errors, timeouts and 5xx are
transient; 4xx answers are permanent, with the server's own error text.
"""

from __future__ import annotations

from typing import Any

import httpx

from fleet.errors import PermanentError, TransientError


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
            raise PermanentError(f"IQDB answered POST /images/{image_id} without a hash: {answer!r}")
        return digest

    async def delete(self, image_id: int) -> bool:
        """Remove ``image_id``; False when IQDB did not have it (404 counts as done)."""
        try:
            await self._call("DELETE", f"/images/{image_id}")
        except PermanentError as exc:
            if getattr(exc, "status", None) == 404:
                return False
            raise
        return True

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:  # connect errors, timeouts, broken connections
            raise TransientError(f"IQDB {method} {path}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 500:
            raise TransientError(f"IQDB {method} {path}: {response.status_code} {_error_text(response)}")
        if response.status_code >= 400:
            error = PermanentError(
                f"IQDB {method} {path}: {response.status_code} {_error_text(response)}", kind="IqdbRejected"
            )
            error.status = response.status_code  # type: ignore[attr-defined]
            raise error
        try:
            return response.json()
        except ValueError as exc:
            raise TransientError(f"IQDB {method} {path}: answer is not JSON") from exc

    async def aclose(self) -> None:
        await self._http.aclose()


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return str(body)[:200]
