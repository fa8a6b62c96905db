"""CORS for the public views API: a notebook or dashboard on another origin may GET what anyone may GET.

`views_cors_origins` (hub and node settings): "*" (the default) lets any origin
read `/v1/views*`, `/v1/cells`, `/v1/windows`, `/v1/catalog` and `/v1/merged/*`
with GET; a list lets those origins only; an empty list turns CORS off. Only
these read-only paths of published, noised data; never credentials (no cookie
is ever set), never a method but GET.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from aiohttp.typedefs import Middleware

PUBLIC_VIEW_PATHS = ("/v1/views", "/v1/cells", "/v1/windows", "/v1/catalog", "/v1/merged/")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_public_view(path: str) -> bool:
    return path.startswith(PUBLIC_VIEW_PATHS)


def views_cors_middleware(origins: Sequence[str]) -> Middleware:
    """Add `Access-Control-Allow-Origin` to GETs of the public views for `origins`; answer their preflights.

    Goes first among an app's middlewares, so that its problem answers (a 400 for a bad range) are readable too.
    """
    any_origin = "*" in origins

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None or not origins or not is_public_view(request.path) or not (any_origin or origin in origins):
            return await handler(request)
        if request.method == "OPTIONS":
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = "GET"
            response.headers["Access-Control-Allow-Headers"] = "Accept, If-None-Match"
            response.headers["Access-Control-Max-Age"] = "86400"
        elif request.method in ("GET", "HEAD"):
            response = await handler(request)
        else:
            return await handler(request)
        response.headers["Access-Control-Allow-Origin"] = "*" if any_origin else origin
        response.headers["Access-Control-Expose-Headers"] = "ETag"
        if not any_origin:
            response.headers["Vary"] = "Origin"
        return response

    return middleware
