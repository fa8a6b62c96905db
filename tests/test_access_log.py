"""The access log is a tally: counts per method, route pattern and status, never a line per request."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import aiohttp
import pytest
from aiohttp import web

from liberation.server import make_runner
from runtime.logs import AccessTally, JsonFormatter


@pytest.fixture
def captured() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("liberation.test-access")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, stream


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_a_period_gives_one_line_per_route_and_status(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    tally = AccessTally(logger, period_seconds=0.2)
    tally.add("POST", "/v1/events", 202, 0.004)
    tally.add("POST", "/v1/events", 202, 0.010)
    tally.add("POST", "/v1/events", 400, 0.001)
    assert lines(stream) == []  # nothing per request
    await asyncio.sleep(0.4)  # the period's timer fires
    got = lines(stream)
    assert [(e["message"], e["route"], e["status"], e["count"]) for e in got] == [
        ("requests", "/v1/events", 202, 2),
        ("requests", "/v1/events", 400, 1),
    ]
    assert got[0]["ms_mean"] == 7.0 and got[0]["ms_max"] == 10.0 and got[0]["period_s"] == 0.2
    tally.flush()
    assert len(lines(stream)) == 2  # an empty period logs nothing


async def test_a_server_error_is_logged_at_once_and_counted(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    tally = AccessTally(logger)
    tally.add("POST", "/v1/events", 503, 0.002)
    assert [(e["level"], e["message"], e["status"]) for e in lines(stream)] == [("warning", "request", 503)]
    tally.flush()
    assert lines(stream)[-1]["count"] == 1


async def test_a_served_app_logs_route_patterns_only_and_flushes_at_cleanup(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    _, stream = captured

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/v1/snapshots/{window}", hello)
    runner = make_runner(app, "test-access")
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as session:
            for window in ("1", "2", "3"):
                async with session.get(f"{url}/v1/snapshots/{window}?who=someone") as resp:
                    assert resp.status == 200
            async with session.get(f"{url}/nowhere") as resp:
                assert resp.status == 404
        assert lines(stream) == []
    finally:
        await runner.cleanup()
    got = lines(stream)
    assert {(e["route"], e["status"], e["count"]) for e in got} == {("/v1/snapshots/{window}", 200, 3), ("?", 404, 1)}
    assert "127.0.0.1" not in stream.getvalue() and "someone" not in stream.getvalue()
