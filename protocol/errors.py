"""The one error shape of node and hub: RFC 9457 problem+json, typed problem URIs.

    LiberationError                 base of every error the project raises on purpose
    ├── Problem                     an HTTP-facing error: status + problem type
    │   ├── BadRequest (400)        malformed body, wrong types, bad field
    │   ├── Forbidden (403)
    │   ├── NotFound (404)
    │   ├── RequestTimeout (408)    the body did not arrive within BODY_DEADLINE_SECONDS
    │   ├── Conflict (409)
    │   ├── PayloadTooLarge (413)
    │   ├── UnsupportedMediaType (415)
    │   ├── Unprocessable (422)     well-formed but refused by the catalog or a rule
    │   ├── TooManyRequests (429)   carries Retry-After
    │   └── ServiceUnavailable (503) carries Retry-After
    └── (module errors: wire.DecodeError, keys.KeyFileError, catalog.CatalogError, ...)

Handlers raise; `problem_middleware` renders. An unexpected exception is logged
and answered with a bare 500: never a traceback, never request data.

The middleware also reads each request body before the handler runs, under a
deadline and the app's size limit: a client that declares too much is refused
before a byte of body is read, and one that dribbles or stalls is cut off, so
neither can hold a handler (and its buffer) for long.
"""

from __future__ import annotations

import asyncio
import json
import logging
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

PROBLEM_BASE = "https://liberation-analytics.org/problems/"
PROBLEM_CONTENT_TYPE = "application/problem+json"
BODY_DEADLINE_SECONDS = 20.0
"""How long a client may take to send a whole request body (1 MiB at ~50 KiB/s)."""

log = logging.getLogger("liberation.errors")


class LiberationError(Exception):
    """Base of every deliberate error; the CLI turns it into one line and exit code 1."""


class Problem(LiberationError):
    """An error a client caused or must know about, rendered as problem+json.

    `slug` names the problem type (`PROBLEM_BASE + slug`); `detail` is for
    humans and must never contain request data (no IP, session id, or echo
    of a submitted value).
    """

    status: ClassVar[int] = 400
    title: ClassVar[str] = "Bad request"
    default_slug: ClassVar[str] = "bad-request"

    def __init__(
        self,
        detail: str,
        *,
        slug: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.slug = slug or self.default_slug
        self.extra = extra or {}
        self.headers = headers or {}

    @property
    def type_uri(self) -> str:
        return PROBLEM_BASE + self.slug

    def to_dict(self) -> dict[str, Any]:
        """The RFC 9457 body: type, title, status, detail, plus extension members."""
        body: dict[str, Any] = {
            "type": self.type_uri,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        body.update(self.extra)
        return body


class BadRequest(Problem):
    status = 400
    title = "Bad request"
    default_slug = "bad-request"


class Unauthorized(Problem):
    status = 401
    title = "Unauthorized"
    default_slug = "unauthorized"


class Forbidden(Problem):
    status = 403
    title = "Forbidden"
    default_slug = "forbidden"


class NotFound(Problem):
    status = 404
    title = "Not found"
    default_slug = "not-found"


class MethodNotAllowed(Problem):
    status = 405
    title = "Method not allowed"
    default_slug = "method-not-allowed"


class RequestTimeout(Problem):
    status = 408
    title = "Request timeout"
    default_slug = "request-timeout"


class Conflict(Problem):
    status = 409
    title = "Conflict"
    default_slug = "conflict"


class PayloadTooLarge(Problem):
    status = 413
    title = "Payload too large"
    default_slug = "payload-too-large"


class UnsupportedMediaType(Problem):
    status = 415
    title = "Unsupported media type"
    default_slug = "unsupported-media-type"


class Unprocessable(Problem):
    status = 422
    title = "Unprocessable content"
    default_slug = "unprocessable"


class TooManyRequests(Problem):
    status = 429
    title = "Too many requests"
    default_slug = "rate-limited"

    def __init__(self, detail: str, *, retry_after: int, slug: str | None = None) -> None:
        super().__init__(detail, slug=slug, headers={"Retry-After": str(retry_after)})


class ServiceUnavailable(Problem):
    status = 503
    title = "Service unavailable"
    default_slug = "unavailable"

    def __init__(self, detail: str, *, retry_after: int, slug: str | None = None) -> None:
        super().__init__(detail, slug=slug, headers={"Retry-After": str(retry_after)})


def problem_response(problem: Problem) -> web.Response:
    """Render a Problem as an aiohttp response with the problem+json content type."""
    return web.Response(
        status=problem.status,
        body=json.dumps(problem.to_dict()).encode(),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=problem.headers,
    )


_HTTP_STATUS_TO_PROBLEM: dict[int, type[Problem]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    408: RequestTimeout,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: Unprocessable,
}

def _problem_for_status(status: int, reason: str) -> Problem:
    """A Problem of aiohttp's own HTTP error (its reason text, never request data)."""
    cls = _HTTP_STATUS_TO_PROBLEM.get(status)
    if cls is not None:
        return cls(reason)
    generic: type[Problem] = type("HttpProblem", (Problem,), {"status": status, "title": reason})
    return generic(reason)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def read_body(request: web.Request) -> None:
    """Read the body into the request (handlers' `request.read()` then returns it) within limits.

    Without this a client could send headers and then one byte a minute: aiohttp
    has no body timeout, and the handler would wait on it for as long as the
    connection stays open.
    """
    if not request.body_exists:
        return
    limit = request.client_max_size
    declared = request.content_length
    if limit and declared is not None and declared > limit:
        raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
    if request.content.is_eof():
        await request.read()  # all there already (a small body comes with its headers): no timer needed
        return
    try:
        async with asyncio.timeout(BODY_DEADLINE_SECONDS):
            await request.read()
    except TimeoutError:
        raise RequestTimeout(
            f"the body did not arrive within {BODY_DEADLINE_SECONDS:g} seconds", slug="body-timeout"
        ) from None
    except RequestPayloadError:
        raise BadRequest("the body is truncated or its encoding is malformed", slug="malformed-body") from None
    except ConnectionError:
        # The client hung up mid-body: nobody will read this answer, but it keeps
        # the disconnect out of the error log (aiohttp's logs the peer address).
        raise BadRequest("the connection closed before the body arrived", slug="incomplete-body") from None


_CLOSE = frozenset({408, 413})
"""Problems after which the connection is closed: its unread body is not worth waiting for."""


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render every error of node and hub in one place, as problem+json."""
    try:
        await read_body(request)
        return await handler(request)
    except Problem as problem:
        response = problem_response(problem)
        if problem.status in _CLOSE:
            response.force_close()
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # aiohttp's own errors (404 route, 405 method, 413 body) get the same shape.
        # Their text is aiohttp's, never request data, apart from the 413 sizes.
        http_problem = _problem_for_status(exc.status, exc.reason)
        response = problem_response(http_problem)
        if http_problem.status in _CLOSE:
            response.force_close()
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception as exc:
        # Logged without request data: the route's pattern, not the raw URL, and the
        # exception's type and frames but not its message, which might quote input.
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "?"
        frames = "".join(traceback.format_tb(exc.__traceback__))
        log.error(
            "unhandled %s in %s %s\n%s", type(exc).__name__, request.method, route, frames
        )
        return web.Response(status=500, text="Internal Server Error")
