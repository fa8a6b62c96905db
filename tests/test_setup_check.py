"""The operator's setup check: today's counts and the last events, on the operator's listener only."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp

from node.tally import DayTally
from tests.servers import node_settings, run_node
from tests.test_node_ingest import make_event, post

SITE = "https://tools.example.org"


async def test_setup_check_shows_today_and_the_last_events_to_the_operator_only(tmp_path: Path) -> None:
    settings = node_settings(tmp_path, cors_origins=(SITE,), plausible={"domains": {"tools.example.org": "runway-calculator"}})
    async with run_node(settings) as running, aiohttp.ClientSession() as session:
        async with session.get(running.metrics_url + "/setup.json") as resp:
            empty = await resp.json()
        assert empty["today"]["stored"] == 0 and empty["last_events"] == []
        assert any("No event stored today" in h for h in empty["hints"])

        assert (await post(running, make_event(1), headers={"Origin": SITE}))[0] == 202
        assert (await post(running, make_event(2, action="complete", geo_hint="DE")))[0] == 202
        assert (await post(running, make_event(3), headers={"Origin": "https://forgotten.example"}))[0] == 403
        plausible = {"n": "pageview", "u": "https://elsewhere.example/", "d": "elsewhere.example"}
        assert (await post(running, plausible, path="/api/event", content_type="text/plain"))[0] == 202

        async with session.get(running.metrics_url + "/setup.json") as resp:
            assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
            report = await resp.json()
            raw = await resp.text()
        today = report["today"]
        assert (today["stored"], today["accepted"]) == (2, 2)
        assert today["refused"] == {"origin-not-allowed": 1, "unknown-site": 1}
        assert [(e["app"], e["action"], e["country"]) for e in report["last_events"]] == [
            ("runway-calculator", "complete", "DE"), ("runway-calculator", "calculate", "US"),
        ]
        # No finer time than the stored hour, and no session in any form.
        assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:00Z", e["hour"]) for e in report["last_events"])
        assert "sess_test_" not in raw and "session" not in raw
        assert report["wiring"]["cors_origins"] == [SITE]
        hints = " ".join(report["hints"])
        assert "liberation node sites add ORIGIN" in hints and "--plausible-domain" in hints

        async with session.get(running.metrics_url + "/setup") as resp:
            page = await resp.text()
            assert resp.status == 200 and resp.content_type == "text/html"
            assert resp.headers["Content-Security-Policy"].startswith("default-src 'none'")
        assert "runway-calculator" in page and "origin-not-allowed" in page and "sess_test_" not in page
        # The public port has no such page: the exact, live figures are the operator's.
        for path in ("/setup", "/setup.json"):
            async with session.get(running.url + path) as resp:
                assert resp.status == 404


def test_day_tally_starts_afresh_each_utc_day() -> None:
    now = [datetime(2026, 11, 23, 22, 30, 15, tzinfo=UTC)]
    tally = DayTally(lambda: now[0])
    tally.add("accepted", 3)
    tally.add("origin-not-allowed")
    reading = tally.read()
    assert (reading.since, reading.accepted, reading.refused) == (
        datetime(2026, 11, 23, 22, 30, tzinfo=UTC), 3, {"origin-not-allowed": 1})
    now[0] += timedelta(hours=2)
    tally.add("unknown-site", 2)
    reading = tally.read()
    assert (reading.since, reading.accepted, reading.refused) == (
        datetime(2026, 11, 24, tzinfo=UTC), 0, {"unknown-site": 2})
