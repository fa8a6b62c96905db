"""Other trackers and other origins: Umami's `/api/send`, Plausible's drops by reason, refused origins traced.

Real node on loopback, real HTTP, DuckDB read back; the tracker bodies are the
shapes the trackers' own scripts build (tests/fixtures/README.md).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from node.origins import RefusedOrigins
from node.settings import NodeSettings
from tests.servers import RunningNode, node_settings, run_node
from tests.test_node_ingest import FIXTURES, assert_problem, make_event, post, rows

SITE = "https://runway.example.org"
WEBSITE = "4fb7fa4c-5b46-438d-94b3-3a8fb9bc2e8b"
UA = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Test/1.0"}


def umami_settings(tmp_path: Path, **changes: Any) -> NodeSettings:
    base: dict[str, Any] = {
        "cors_origins": (SITE,),
        "umami": {"websites": {WEBSITE: "runway-calculator"}, "events": {"pageview": "start"}},
    }
    return node_settings(tmp_path, **{**base, **changes})


async def metric(running: RunningNode, line_prefix: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(running.metrics_url + "/metrics") as resp:
        text = await resp.text()
    found = [line for line in text.splitlines() if line.startswith(line_prefix)]
    return float(found[0].split()[-1]) if found else 0.0


async def test_umami_tracker_sends_land_as_events(tmp_path: Path) -> None:
    async with run_node(umami_settings(tmp_path)) as running:
        answers = []
        for name in ("umami_pageview.json", "umami_custom_event.json"):
            raw = (FIXTURES / name).read_bytes()
            answers.append(await post(running, None, raw=raw, path="/api/send", headers={**UA, "Origin": SITE}))
        assert [(s, b) for s, b, _ in answers] == [
            (202, {"accepted": 1, "dropped_attributes": 0}),
            (202, {"accepted": 1, "dropped_attributes": 2}),  # `email` and the nested object
        ]
        # What Umami's script does with the answer: res.json(), then reads `disabled` and `cache`.
        assert all("disabled" not in b and "cache" not in b for _, b, _ in answers)
        assert answers[1][2]["Access-Control-Allow-Origin"] == SITE
        stored = rows(running, "SELECT app, action, a_runway_months, a_industry FROM events ORDER BY seq")
        assert stored == [("runway-calculator", "start", None, None), ("runway-calculator", "calculate", "6..9", "tech")]
        # Same IP + User-Agent + website: one session, whatever `vid` (or `id`) the payload claims.
        assert rows(running, "SELECT count(DISTINCT session) FROM events") == [(1,)]


async def test_umami_preflight_allows_what_the_tracker_sends(tmp_path: Path) -> None:
    async with run_node(umami_settings(tmp_path)) as running, aiohttp.ClientSession() as session:
        headers = {"Origin": SITE, "Access-Control-Request-Method": "POST",
                   "Access-Control-Request-Headers": "content-type,x-umami-cache"}
        async with session.options(running.url + "/api/send", headers=headers) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == SITE
            allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
            assert {"content-type", "x-umami-cache"} <= allowed
        async with session.options(running.url + "/api/send", headers={**headers, "Origin": "https://other.example"}) as resp:
            assert resp.status == 403


async def test_umami_drops_and_refusals(tmp_path: Path) -> None:
    async with run_node(umami_settings(tmp_path, umami={"websites": {WEBSITE: "runway-calculator"}})) as running:
        pageview = json.loads((FIXTURES / "umami_pageview.json").read_bytes())
        # Unmapped page view (no `events` mapping), unknown website, identify: 202, nothing stored.
        other = {"type": "event", "payload": {**pageview["payload"], "website": "00000000-0000-0000-0000-000000000000"}}
        identify = {"type": "identify", "payload": {**pageview["payload"], "id": "someone@example.org", "data": {"plan": "pro"}}}
        for body, reason in ((pageview, "undeclared-action"), (other, "unknown-site"), (identify, "not-an-event")):
            status, answer, _ = await post(running, body, path="/api/send", headers=UA)
            assert (status, answer) == (202, {"accepted": 0, "dropped": reason})
        # Malformed sends: a 400 problem, as everywhere.
        for body in (
            {"payload": pageview["payload"]},
            {"type": "event"},
            {"type": ["event"], "payload": {}},
            {"type": "event", "payload": {"url": "/"}},
            {"type": "event", "payload": {**pageview["payload"], "data": [1]}},
            [1],
        ):
            status, answer, _ = await post(running, body, path="/api/send")
            assert_problem(status, answer, 400, "invalid-event")
        status, answer, _ = await post(running, None, raw=b"{not json", path="/api/send")
        assert_problem(status, answer, 400, "malformed-body")
        assert rows(running) == [(0,)]
        assert await metric(running, 'liberation_node_events_rejected_total{reason="unknown-site"}') == 1
        assert await metric(running, 'liberation_node_events_rejected_total{reason="undeclared-action"}') == 1


async def test_plausible_drops_are_counted_by_reason(tmp_path: Path) -> None:
    settings = node_settings(tmp_path, plausible={"domains": {"runway.example.org": "runway-calculator"}})
    async with run_node(settings) as running:
        for payload in ({"n": "pageview", "u": "https://other.example/", "d": "other.example"},
                        {"n": "pageview", "u": "https://runway.example.org/", "d": "runway.example.org"}):
            status, body, headers = await post(running, payload, path="/api/event", content_type="text/plain")
            assert (status, body, headers["x-plausible-dropped"]) == (202, "ok", "1")
        assert await metric(running, 'liberation_node_events_rejected_total{reason="unknown-site"}') == 1
        assert await metric(running, 'liberation_node_events_rejected_total{reason="undeclared-action"}') == 1
        assert await metric(running, "liberation_node_plausible_dropped_total") == 2


async def test_a_refused_origin_is_counted_and_named_in_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The README snippet from an unlisted site used to fail with nothing in metrics or logs naming the origin."""
    async with run_node(node_settings(tmp_path)) as running:
        with caplog.at_level(logging.WARNING, logger="liberation.node"):
            for i in range(3):
                status, body, _ = await post(running, make_event(i), headers={"Origin": "https://forgotten.example"},
                                             content_type="text/plain")
                assert_problem(status, body, 403, "origin-not-allowed")
                assert "cors_origins" in body["detail"]
            await post(running, make_event(9), headers={"Origin": "https://another.example"})
        lines = [r for r in caplog.records if "cors_origins" in r.getMessage()]
        # Once per origin per minute, naming the site and nothing of the visitor.
        assert [r.__dict__["origin"] for r in lines] == ["https://forgotten.example", "https://another.example"]
        assert all("127.0.0.1" not in json.dumps(r.__dict__, default=str).replace(running.url, "") for r in lines)
        assert await metric(running, 'liberation_node_events_rejected_total{reason="origin-not-allowed"}') == 4
        assert rows(running) == [(0,)]


def test_refused_origins_log_once_a_minute_each(caplog: pytest.LogCaptureFixture) -> None:
    clock = [1000.0]
    refusals = RefusedOrigins(now=lambda: clock[0], limit=2)
    with caplog.at_level(logging.WARNING, logger="liberation.node"):
        for _ in range(5):
            refusals.refused("https://a.example")
        clock[0] += 59
        refusals.refused("https://a.example")
        clock[0] += 1
        refusals.refused("https://a.example")  # a minute after its last line: logged, with the count since
        refusals.refused("https://" + "x" * 500)  # cut to 200 characters
    logged = [(r.__dict__["origin"], r.__dict__["refused_since_last_line"]) for r in caplog.records]
    assert logged == [("https://a.example", 1), ("https://a.example", 6), ("https://" + "x" * 192, 1)]
