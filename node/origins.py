"""Which browser origins may send events (`cors_origins`): CORS answers for them, a trace of the others.

A refused origin is counted (`liberation_node_events_rejected{reason="origin-not-allowed"}`,
a refused preflight included: its POST never comes) and logged at most once a
minute per origin, with how many were refused since its last line, so a site
someone forgot to list shows up by name. An origin names a site, never a person:
no address, no path, nothing of the request but its Origin header.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from node.routes import INGEST
from node.settings import NodeSettings
from protocol.errors import Forbidden, ProblemType

log = logging.getLogger("liberation.node")

INGEST_PATHS = frozenset({"/v1/events", "/api/event", "/api/send"})
"""Where browsers post events: the node's own, Plausible's and Umami's endpoints."""
ORIGIN_NOT_ALLOWED = ProblemType.ORIGIN_NOT_ALLOWED
LOG_INTERVAL_SECONDS = 60.0
MAX_ORIGIN_CHARS = 200
# Umami's tracker sends `x-umami-cache` once a page called umami.identify(); allowing it costs nothing.
ALLOW_HEADERS = "Content-Type, X-Umami-Cache"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def allows(settings: NodeSettings, origin: str) -> bool:
    """Whether `cors_origins` lists `origin` (or "*")."""
    return "*" in settings.cors_origins or origin in settings.cors_origins


class RefusedOrigins:
    """Logs each refused origin at most once per `interval` seconds; remembers at most `limit` origins."""

    def __init__(
        self, *, interval: float = LOG_INTERVAL_SECONDS, limit: int = 1024, now: Callable[[], float] = time.monotonic
    ) -> None:
        self._interval = interval
        self._limit = limit
        self._now = now
        # origin -> (when its last line was logged, refusals since)
        self._seen: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def refused(self, origin: str) -> None:
        origin = origin[:MAX_ORIGIN_CHARS]
        now = self._now()
        last = self._seen.pop(origin, None)
        if last is not None and now - last[0] < self._interval:
            self._seen[origin] = (last[0], last[1] + 1)
            return
        log.warning(
            "refused events from an origin not in cors_origins; to take them: "
            "liberation node sites add ORIGIN --app APP (docs/operations.md)",
            extra={"origin": origin, "refused_since_last_line": 1 + (last[1] if last else 0)},
        )
        self._seen[origin] = (now, 0)
        while len(self._seen) > self._limit:
            self._seen.popitem(last=False)


def cors_middleware(settings: NodeSettings) -> Middleware:
    """Answer preflights and tag responses for listed origins; refuse events from others (403, counted, logged)."""
    refusals = RefusedOrigins()

    def refuse(request: web.Request, origin: str) -> Forbidden:
        target = request.app.get(INGEST)
        if target is not None:
            target.ingestor.refuse(ORIGIN_NOT_ALLOWED)
        refusals.refused(origin)
        return Forbidden(
            "this origin is not allowed to send events: add it to the node's cors_origins",
            slug=ORIGIN_NOT_ALLOWED,
        )

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None or request.path not in INGEST_PATHS:
            return await handler(request)
        allowed = origin == f"{request.scheme}://{request.host}" or allows(settings, origin)
        if not allowed:
            raise refuse(request, origin)
        if request.method == "OPTIONS":
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
            response.headers["Access-Control-Max-Age"] = "86400"
        else:
            response = await handler(request)
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
        return response

    return middleware
