"""`GET /js/liberation.js`: the client script as served, compacted once and gzipped once at start.

The source (node/static/liberation.js) keeps its comments for readers; what goes
on the wire drops them and the indentation, line by line (newlines stay, so no
statement ever runs into the next), and is gzipped when the browser accepts it:
under 2 KB on the wire (tests/test_client_script.py measures the response).
"""

from __future__ import annotations

import gzip
import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

CACHE_CONTROL = "public, max-age=3600"
_HEADER_COMMENT = re.compile(r"\A/\*.*?\*/\n", re.DOTALL)


def compact(source: str) -> str:
    """The script without its header comment, `//` comment lines, blank lines and indentation.

    Line-based on purpose: a comment inside a string or a regex is never touched,
    because only whole lines that start with `//` go.
    """
    lines = (line.strip() for line in _HEADER_COMMENT.sub("", source).splitlines())
    return "\n".join(line for line in lines if line and not line.startswith("//")) + "\n"


def accepts_gzip(header: str) -> bool:
    """Whether an Accept-Encoding header takes gzip (`gzip;q=0` refuses it)."""
    for part in header.lower().split(","):
        name, _, params = part.strip().partition(";")
        if name.strip() in ("gzip", "*"):
            q = params.strip().removeprefix("q=")
            try:
                return not params.strip().startswith("q=") or float(q) > 0
            except ValueError:
                return False
    return False


@dataclass(frozen=True)
class ClientScript:
    """The served bytes, plain and gzipped, and their ETag."""

    plain: bytes
    gzipped: bytes
    etag: str

    @classmethod
    def from_package(cls) -> ClientScript:
        source = resources.files("node").joinpath("static/liberation.js").read_text(encoding="utf-8")
        plain = compact(source).encode()
        # mtime=0: the same bytes at every start, so the ETag and Content-Length are stable.
        return cls(plain, gzip.compress(plain, 9, mtime=0), 'W/"' + hashlib.sha256(plain).hexdigest()[:32] + '"')

    def respond(self, request: web.Request) -> web.Response:
        headers = {"Cache-Control": CACHE_CONTROL, "ETag": self.etag, "Vary": "Accept-Encoding"}
        if self.etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        body = self.plain
        if accepts_gzip(request.headers.get("Accept-Encoding", "")):
            body = self.gzipped
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, content_type="application/javascript", charset="utf-8", headers=headers)
