"""A loopback HTTP server that speaks the IQDB API contract (danbooru/iqdb and iqdb-rs), for
the tests and the light benchmark (here, so the benchmark need not import ``tests``):

- ``POST /images/{id}`` (multipart field ``file``) -> 200 ``{"post_id", "hash", "signature"}``;
  JPEG only, like danbooru/iqdb; replaces an existing entry.
- ``DELETE /images/{id}`` -> 200 ``{"post_id"}``, or 404 ``{"error": "not_found"}``.
- ``POST /query?limit=N`` (``file`` or ``hash``) -> a JSON array sorted by score.
- ``GET /status`` -> ``{"images": n}``.
- errors as JSON ``{"error": code}`` with 400/404/500.

It records every request (time, method, path, body) so tests can check what arrived, and
can be told to fail the next requests with a status, to exercise retries, to answer them
with a raw :class:`Answer` (a huge body, a redirect, a bad hash), as a broken IQDB would, or
to hold every answer until the test lets them go (a hung IQDB, with no clock involved).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


@dataclass
class Request:
    at: float
    method: str
    path: str
    file: bytes | None = None


@dataclass
class Answer:
    """A raw answer: ``chunk`` sent ``repeat`` times (a huge body costs the server nothing),
    with a Content-Length unless ``declare_length`` is off (then the body ends at close)."""

    status: int
    chunk: bytes
    repeat: int = 1
    headers: dict[str, str] = field(default_factory=dict)
    declare_length: bool = True
    sent: int = 0
    """Bytes of the body written before the client stopped reading."""


def _open_gate() -> threading.Event:
    gate = threading.Event()
    gate.set()
    return gate


@dataclass
class IqdbState:
    images: dict[int, str] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    answering: threading.Event = field(default_factory=_open_gate)
    """Cleared: every request is recorded, then held unanswered until it is set again."""
    fail_next: list[int] = field(default_factory=list)
    """Statuses to answer the next requests with, in order (e.g. [503, 503])."""
    answer_next: list[Answer] = field(default_factory=list)
    """Raw answers for the next requests, in order (after any ``fail_next``)."""
    lock: threading.Lock = field(default_factory=threading.Lock)


def fake_hash(data: bytes) -> str:
    """A 533-character hash, like danbooru/iqdb's, derived from the bytes."""
    digest = hashlib.sha256(data).hexdigest()
    return ("iqdb_" + digest * 9)[:533]


def _multipart_field(content_type: str, body: bytes, name: str) -> bytes | None:
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == name:
            payload = part.get_payload(decode=True)
            return payload if isinstance(payload, bytes) else None
    return None


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _answered_as_told(self, file: bytes | None = None) -> bool:
        """Record the request, hold it while the test says so, then answer it as the test
        asked (a failure status, or a raw answer) if it did; whether it was answered."""
        state = self.server.state
        with state.lock:
            state.requests.append(Request(time.time(), self.command, self.path, file))
        state.answering.wait()
        with state.lock:
            status = state.fail_next.pop(0) if state.fail_next else None
            raw = state.answer_next.pop(0) if status is None and state.answer_next else None
        if status is not None:
            self._send(status, {"error": "forced_failure"})
        elif raw is not None:
            self._send_raw(raw)
        return status is not None or raw is not None

    def _send_raw(self, raw: Answer) -> None:
        self.send_response(raw.status)
        for name, value in {"Content-Type": "application/json", **raw.headers}.items():
            self.send_header(name, value)
        if raw.declare_length:
            self.send_header("Content-Length", str(len(raw.chunk) * raw.repeat))
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            for _ in range(raw.repeat):
                self.wfile.write(raw.chunk)
                raw.sent += len(raw.chunk)
        except OSError:  # the client hung up: it read what it wanted
            pass
        self.close_connection = True

    def _file(self) -> bytes | None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        content_type = self.headers.get("Content-Type", "")
        if not content_type.startswith("multipart/form-data"):
            return None
        return _multipart_field(content_type, body, "file")

    def _image_id(self) -> int | None:
        parts = urlparse(self.path).path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "images" and parts[1].isdigit():
            return int(parts[1])
        return None

    def do_POST(self) -> None:
        url = urlparse(self.path)
        file = self._file()
        if self._answered_as_told(file):
            return None
        if url.path == "/query":
            return self._query(file, parse_qs(url.query))
        image_id = self._image_id()
        if image_id is None:
            return self._send(404, {"error": "not_found"})
        if not file:
            return self._send(400, {"error": "missing_file"})
        if not file.startswith(b"\xff\xd8\xff"):
            return self._send(400, {"error": "invalid_image"})  # danbooru/iqdb decodes JPEG only
        digest = fake_hash(file)
        with self.server.state.lock:
            self.server.state.images[image_id] = digest
        self._send(200, {"post_id": image_id, "hash": digest, "signature": {"avglf": [0.5, 0.0, 0.0]}})

    def _query(self, file: bytes | None, query: dict[str, list[str]]) -> None:
        wanted = query.get("hash", [None])[0] or (fake_hash(file) if file else None)
        if wanted is None:
            return self._send(400, {"error": "missing_file"})
        limit = int(query.get("limit", ["10"])[0])
        with self.server.state.lock:
            matches = [
                {"post_id": pid, "score": 100.0 if h == wanted else 10.0, "hash": h, "signature": {}}
                for pid, h in self.server.state.images.items()
            ]
        matches.sort(key=lambda m: -float(str(m["score"])))
        self._send(200, matches[:limit])

    def do_DELETE(self) -> None:
        if self._answered_as_told():
            return None
        image_id = self._image_id()
        with self.server.state.lock:
            known = image_id is not None and self.server.state.images.pop(image_id, None) is not None
        if not known:
            return self._send(404, {"error": "not_found"})
        self._send(200, {"post_id": image_id})

    def do_GET(self) -> None:
        if self._answered_as_told():
            return None
        if urlparse(self.path).path == "/status":
            with self.server.state.lock:
                return self._send(200, {"images": len(self.server.state.images)})
        self._send(404, {"error": "not_found"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: IqdbState


class IqdbServer:
    """``with IqdbServer() as iqdb: iqdb.url ...`` on a free loopback port."""

    def __init__(self) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.state = IqdbState()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def state(self) -> IqdbState:
        return self._server.state

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> IqdbServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.state.answering.set()  # no request stays held past the server
        self._server.shutdown()
        self._server.server_close()
