"""The shared problem+json middleware, on a real aiohttp server on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from protocol.errors import (
    PROBLEM_BASE,
    PROBLEM_CONTENT_TYPE,
    BadRequest,
    Conflict,
    Forbidden,
    TooManyRequests,
    problem_table,
)
from runtime.problems import problem_middleware

SECRET = "203.0.113.77 sess_secret_value"


async def _bad(request: web.Request) -> web.Response:
    raise BadRequest("field `app`: must be a slug", slug="invalid-event", extra={"field": "app"})


async def _forbidden(request: web.Request) -> web.Response:
    raise Forbidden("key is not enrolled", slug="unknown-key")


async def _conflict(request: web.Request) -> web.Response:
    raise Conflict("equivocation", slug="equivocation")


async def _limited(request: web.Request) -> web.Response:
    raise TooManyRequests("slow down", retry_after=7)


async def _crash(request: web.Request) -> web.Response:
    raise RuntimeError(SECRET)


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    app = web.Application(middlewares=[problem_middleware])
    app.router.add_get("/bad", _bad)
    app.router.add_get("/forbidden", _forbidden)
    app.router.add_get("/conflict", _conflict)
    app.router.add_get("/limited", _limited)
    app.router.add_get("/crash", _crash)
    app.router.add_post("/only-post", _bad)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.mark.parametrize(
    ("path", "status", "slug"),
    [
        ("/bad", 400, "invalid-event"),
        ("/forbidden", 403, "unknown-key"),
        ("/conflict", 409, "equivocation"),
        ("/limited", 429, "rate-limited"),
        ("/no-such-route", 404, "not-found"),
        ("/only-post", 405, "method-not-allowed"),
    ],
)
async def test_every_error_is_problem_json(base_url: str, path: str, status: int, slug: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(base_url + path) as resp:
        assert resp.status == status
        assert resp.content_type == PROBLEM_CONTENT_TYPE
        body = await resp.json(content_type=None)
        assert body["type"] == PROBLEM_BASE + slug
        assert body["status"] == status
        assert isinstance(body["title"], str) and body["title"]
        assert isinstance(body["detail"], str)
        if status == 429:
            assert resp.headers["Retry-After"] == "7"
        if status == 405:
            assert "POST" in resp.headers["Allow"]


async def test_extension_members_are_kept(base_url: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(base_url + "/bad") as resp:
        assert (await resp.json(content_type=None))["field"] == "app"


async def test_unexpected_error_is_a_bare_500(
    base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with aiohttp.ClientSession() as session, session.get(base_url + "/crash") as resp:
        assert resp.status == 500
        text = await resp.text()
    assert SECRET not in text and "Traceback" not in text and "RuntimeError" not in text
    # The operator's log names the error and where, but never quotes its message.
    assert "RuntimeError" in caplog.text and "/crash" in caplog.text
    assert SECRET not in caplog.text


def test_protocol_doc_lists_exactly_the_problem_types() -> None:
    """docs/protocol.md's table is `ProblemType`, generated: a new type without its doc line fails here."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    begin, end = "<!-- problem-types:begin -->\n", "<!-- problem-types:end -->"
    assert doc[doc.index(begin) + len(begin) : doc.index(end)] == problem_table()
