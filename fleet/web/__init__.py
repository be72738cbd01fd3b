"""``fleet web``: a page for operators, beside the workers.

What ``fleet status``, ``fleet dead`` and ``fleet rethumb`` tell on a terminal, live: a static
page whose script polls ``/api/state`` every 2 s and builds the tables with ``textContent``
(so a payload holding ``<script>`` is shown as text), and the dead-letter actions retry and
purge as POSTs.

Safe by default: it listens on 127.0.0.1; without ``WEB_TOKEN`` it is read-only (every POST
answers 403). With one, a POST needs ``Authorization: Bearer <token>``, which only the page's
own script sends (a cross-site form cannot set a header), and a request whose ``Origin`` is
not this page's is refused too. While it listens on loopback, a ``Host`` that is not a
loopback name is refused, so a rebound DNS name cannot read it. No secret (Redis password,
database URL, the token) is ever in a page or an answer.
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from collections.abc import Awaitable, Callable
from importlib.resources import files
from typing import Any
from urllib.parse import urlsplit

from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fleet.client import FleetClient, lifespan
from fleet.registry import Queue
from fleet.settings import Settings
from fleet.web import sources

STATIC = {
    "/": ("page.html", "text/html; charset=utf-8"),
    "/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/page.css": ("page.css", "text/css; charset=utf-8"),
}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
ACTIONS = {"retry": sources.retry_letters, "purge": sources.purge_letters}


def _answer(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=HEADERS)


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_allowed(settings: Settings, request: Request) -> bool:
    """On loopback, only loopback names: a page of another site whose name was rebound to
    127.0.0.1 sends its own name as Host, and is refused."""
    if not _is_loopback(settings.web_host):
        return True  # published on purpose (a container, behind a proxy): any name
    host = urlsplit(f"//{request.headers.get('host', '')}").hostname or ""
    return _is_loopback(host)


def _refusal(settings: Settings, request: Request) -> str | None:
    """Why a POST is refused, or None: read-only, a wrong or missing token, another origin."""
    if not settings.web_token:
        return "read-only: WEB_TOKEN is not set where `fleet web` runs"
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        return "refused: the request comes from another origin"
    if request.headers.get("sec-fetch-site") == "cross-site":
        return "refused: a cross-site request"
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), settings.web_token.encode()):
        return "refused: a wrong or missing token (Authorization: Bearer …)"
    return None


def _scrubbed(text: str, settings: Settings) -> str:
    """``text`` with every secret fleet knows cut out, for error answers."""
    secrets = [settings.web_token]
    for url in (settings.redis_url, settings.database_url):
        if url and "@" in url:
            secrets += [url, url.split("://", 1)[-1].rsplit("@", 1)[0]]
    for secret in filter(None, secrets):
        text = text.replace(secret, "***")
    return text


class Page:
    """The routes, on one client and the settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @staticmethod
    def client(request: Request) -> FleetClient:
        client: FleetClient = request.app.state.fleet
        return client

    async def static(self, request: Request) -> Response:
        name, media_type = STATIC[request.url.path]
        body = (files("fleet.web") / name).read_bytes()
        return Response(body, media_type=media_type, headers=HEADERS)

    async def state(self, request: Request) -> Response:
        client = self.client(request)
        redis = client.redis
        return _answer(
            {
                "now": time.time(),
                "namespace": self.settings.namespace,
                "redis": client.where,
                "actions": bool(self.settings.web_token),
                "queues": await sources.queues(redis, self.settings),
                "replicas": await sources.replicas(redis, self.settings),
                "runs": await sources.bulk_runs(redis, self.settings),
                "dead": await sources.dead_letters(client),
            }
        )

    async def act(self, request: Request) -> Response:
        """POST /api/dead/{retry|purge}?job_id=… or ?queue=… (neither: every queue)."""
        if (refused := _refusal(self.settings, request)) is not None:
            return _answer({"error": refused}, 403)
        job_id = request.query_params.get("job_id") or None
        queue = request.query_params.get("queue") or None
        if queue is not None and queue not in {q.value for q in Queue}:
            return _answer({"error": f"no queue {queue!r}"}, 400)
        try:
            action = ACTIONS[request.url.path.rsplit("/", 1)[1]]
            done = await action(self.client(request), job_id, queue)
        except LookupError as exc:
            return _answer({"error": str(exc.args[0])}, 404)
        return _answer(done)


def create_app(settings: Settings) -> Starlette:
    page = Page(settings)

    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if not _host_allowed(settings, request):
            return _answer({"error": "refused: this page answers loopback names only"}, 403)
        try:
            return await call_next(request)
        except (TimeoutError, RedisError, OSError) as exc:  # Redis down: say so, keep serving
            return _answer({"error": _scrubbed(f"cannot reach Redis: {exc}", settings)}, 503)

    return Starlette(
        routes=[
            *(Route(path, page.static) for path in STATIC),
            Route("/api/state", page.state),
            *(Route(f"/api/dead/{action}", page.act, methods=["POST"]) for action in ACTIONS),
        ],
        middleware=[Middleware(BaseHTTPMiddleware, dispatch=guard)],
        lifespan=lifespan(settings),
    )


def serve(settings: Settings) -> int:
    """Run the page until SIGINT/SIGTERM."""
    import uvicorn

    app = create_app(settings)
    uvicorn.run(app, host=settings.web_host, port=settings.web_port, access_log=False, log_level="warning")
    return 0
