"""The dashboard's static assets: `GET /` (index.html) and `GET /static/{path}`, under a strict CSP.

The dashboard is plain HTML, CSS and ES modules from `views/static/`
(no build step); it reads the views API of the same origin, so the hub and a
community node can both serve it. Responses never set cookies, carry a
Content-Security-Policy that allows nothing but this origin (no inline
script or style, no third-party request, no framing), and an ETag so that
browsers revalidate cheaply. Only known file types are served; anything
outside the static directory, hidden, or unknown is a 404.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path, PurePosixPath

from aiohttp import web

from protocol.errors import NotFound, ProblemType

STATIC_DIR = Path(__file__).resolve().parent / "static"

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'; object-src 'none'"
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), interest-cohort=()",
}

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
}

COMPRESSIBLE = frozenset({".html", ".css", ".js", ".mjs", ".json", ".svg", ".txt"})

# index.html revalidates on every load (so a new release shows at once);
# assets may be reused for an hour, then revalidated by ETag.
INDEX_CACHE = "no-cache"
ASSET_CACHE = "public, max-age=3600"


def _resolve(static_dir: Path, relative: str) -> Path:
    """The file `relative` names inside `static_dir`, or NotFound for anything else."""
    if not relative or "\\" in relative or "\x00" in relative:
        raise NotFound("no such file", slug=ProblemType.NOT_FOUND)
    parts = PurePosixPath(relative).parts
    if not parts or any(p in ("", ".", "..") or p.startswith(".") for p in parts) or parts[0] == "/":
        raise NotFound("no such file", slug=ProblemType.NOT_FOUND)
    root = static_dir.resolve()
    path = root.joinpath(*parts).resolve()
    if not path.is_relative_to(root) or path.suffix.lower() not in CONTENT_TYPES or not path.is_file():
        raise NotFound("no such file", slug=ProblemType.NOT_FOUND)
    return path


def _respond(request: web.Request, body: bytes, suffix: str, cache: str) -> web.Response:
    # Weak: the same entity may go out gzipped or not.
    etag = 'W/"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {**SECURITY_HEADERS, "Cache-Control": cache, "ETag": etag, "Vary": "Accept-Encoding"}
    if etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = CONTENT_TYPES[suffix]
    response = web.Response(body=body, headers=headers)
    if suffix in COMPRESSIBLE and len(body) > 1024:
        response.enable_compression()
    return response


def add_dashboard_routes(app: web.Application, static_dir: Path | None = None) -> None:
    """Serve the dashboard at `/` and its assets at `/static/{path}` from `static_dir` (default: ours)."""
    root = (static_dir or STATIC_DIR).resolve()

    async def index(request: web.Request) -> web.Response:
        path = _resolve(root, "index.html")
        body = await asyncio.to_thread(path.read_bytes)
        return _respond(request, body, ".html", INDEX_CACHE)

    async def asset(request: web.Request) -> web.Response:
        path = _resolve(root, request.match_info["path"])
        body = await asyncio.to_thread(path.read_bytes)
        return _respond(request, body, path.suffix.lower(), ASSET_CACHE)

    app.router.add_get("/", index)
    app.router.add_get("/static/{path:.+}", asset)
