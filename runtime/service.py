"""What the app factories of node, hub and share keeper share: their routes declared as one list."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Route = tuple[str, str, Handler]
"""(method, path, handler)."""


def add_routes(app: web.Application, routes: Iterable[Route]) -> None:
    """Register each (method, path, handler) on the app's router."""
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
