"""Problem+json over aiohttp: the middleware that renders every error of node, hub and keeper.

Handlers raise `protocol.errors.Problem`; `problem_middleware` renders it. An
unexpected exception is logged and answered with a bare 500: never a traceback,
never request data.

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

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from protocol.errors import (
    PROBLEM_CONTENT_TYPE,
    BadRequest,
    Conflict,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Problem,
    ProblemType,
    RequestTimeout,
    Unauthorized,
    Unprocessable,
    UnsupportedMediaType,
)

BODY_DEADLINE_SECONDS = 20.0
"""How long a client may take to send a whole request body (1 MiB at ~50 KiB/s)."""

log = logging.getLogger("liberation.errors")


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
            f"the body did not arrive within {BODY_DEADLINE_SECONDS:g} seconds", slug=ProblemType.BODY_TIMEOUT
        ) from None
    except RequestPayloadError:
        raise BadRequest("the body is truncated or its encoding is malformed", slug=ProblemType.MALFORMED_BODY) from None
    except ConnectionError:
        # The client hung up mid-body: nobody will read this answer, but it keeps
        # the disconnect out of the error log (aiohttp's logs the peer address).
        raise BadRequest("the connection closed before the body arrived", slug=ProblemType.INCOMPLETE_BODY) from None


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
    except Exception as exc:  # noqa: BLE001 - the last line of defence: a bare 500, never a traceback
        # Logged without request data: the route's pattern, not the raw URL, and the
        # exception's type and frames but not its message, which might quote input.
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "?"
        frames = "".join(traceback.format_tb(exc.__traceback__))
        log.error(
            "unhandled %s in %s %s\n%s", type(exc).__name__, request.method, route, frames
        )
        return web.Response(status=500, text="Internal Server Error")
