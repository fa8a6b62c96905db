"""Node ingest end to end: a real server on loopback, real HTTP, then DuckDB is read."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest

from protocol.errors import PROBLEM_BASE, PROBLEM_CONTENT_TYPE
from tests.servers import RunningNode, node_settings, run_node

FIXTURES = Path(__file__).parent / "fixtures"


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def make_event(i: int = 0, **changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "app": "runway-calculator",
        "action": "calculate",
        "attributes": {"runway_months": 8.5, "savings_band": "10k-25k", "industry": "tech"},
        "timestamp": now_iso(),
        "geo_hint": "US",
        "session_id": f"sess_test_{i:06d}",
    }
    event.update(changes)
    return event


def rows(running: RunningNode, sql: str = "SELECT count(*) FROM events") -> Any:
    running.node.store.drain()  # acked rows wait in a stage until drained
    return running.node.store.cursor().execute(sql).fetchall()


async def post(
    running: RunningNode, body: Any, *, path: str = "/v1/events", content_type: str = "application/json",
    raw: bytes | None = None, headers: dict[str, str] | None = None,
) -> tuple[int, Any, Any]:
    data: Any = raw if raw is not None else json.dumps(body).encode()
    if len(data) > 512 * 1024:
        data = io.BytesIO(data)  # aiohttp warns about large raw bodies
    async with aiohttp.ClientSession() as session, session.post(
        running.url + path, data=data, headers={"Content-Type": content_type, **(headers or {})}
    ) as resp:
        text = await resp.text()
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = text
        return resp.status, parsed, resp.headers


async def test_single_event_is_stored_filtered(node: RunningNode) -> None:
    status, body, _ = await post(node, make_event(attributes={
        "runway_months": 8.5, "savings_band": "10k-25k", "industry": "tech", "email": "x@y.z"
    }))
    assert status == 202
    assert body == {"accepted": 1, "dropped_attributes": 1}
    stored = rows(node, "SELECT app, action, country, a_runway_months, a_savings_band, a_industry, hour % 3600 FROM events")
    assert stored == [("runway-calculator", "calculate", "US", "6..9", "10k-25k", "tech", 0)]
    columns = {r[0] for r in rows(node, "SELECT column_name FROM duckdb_columns() WHERE table_name = 'events'")}
    assert not any("email" in c for c in columns)


@pytest.mark.parametrize("shape", ["array", "object", "msgpack", "beacon"])
async def test_batch_shapes(node: RunningNode, shape: str) -> None:
    events = [make_event(i) for i in range(50)]
    if shape == "array":
        status, body, _ = await post(node, events)
    elif shape == "object":
        status, body, _ = await post(node, {"events": events})
    elif shape == "msgpack":
        status, body, _ = await post(node, None, raw=msgpack.packb(events), content_type="application/msgpack")
    else:
        status, body, _ = await post(node, events, content_type="text/plain;charset=UTF-8")
    assert status == 202, body
    assert body["accepted"] == 50
    assert rows(node) == [(50,)]
    assert rows(node, "SELECT count(DISTINCT session) FROM events") == [(50,)]


def assert_problem(status: int, body: Any, expected_status: int, slug: str) -> None:
    assert status == expected_status, body
    assert isinstance(body, dict)
    assert body["type"] == PROBLEM_BASE + slug
    assert body["status"] == expected_status
    assert body["title"] and body["detail"]


async def test_a_bad_event_rejects_the_whole_batch(node: RunningNode) -> None:
    events = [make_event(i) for i in range(10)]
    events[7]["timestamp"] = "not a time"
    status, body, headers = await post(node, events)
    assert_problem(status, body, 400, "invalid-event")
    assert headers["Content-Type"].startswith(PROBLEM_CONTENT_TYPE)
    assert body["errors"][0]["index"] == 7 and body["errors"][0]["field"] == "timestamp"
    assert "event 7" in body["detail"] and "timestamp" in body["detail"]
    assert rows(node) == [(0,)]


async def test_an_undeclared_app_rejects_the_batch(node: RunningNode) -> None:
    events = [make_event(i) for i in range(5)]
    events[3]["app"] = "tracker-of-people"
    status, body, _ = await post(node, events)
    assert_problem(status, body, 422, "undeclared-app")
    assert body["errors"][0] == {
        "index": 3, "field": "app", "reason": "undeclared-app", "message": "app is not declared in the catalog"
    }
    assert rows(node) == [(0,)]


async def test_partial_mode_reports_each_event(node: RunningNode) -> None:
    events = [make_event(i) for i in range(4)]
    events[1]["action"] = "nope"
    events[2]["session_id"] = "x"
    status, body, _ = await post(node, events, path="/v1/events?partial=1")
    assert status == 202
    assert body["accepted"] == 2 and body["rejected"] == 2
    assert [r["status"] for r in body["results"]] == ["accepted", "rejected", "rejected", "accepted"]
    assert body["results"][1]["field"] == "action"
    assert body["results"][2]["field"] == "session_id"
    assert rows(node) == [(2,)]


async def test_timestamps_far_from_the_server_clock_are_refused(node: RunningNode) -> None:
    status, body, _ = await post(node, make_event(timestamp="2020-01-01T00:00:00Z"))
    assert_problem(status, body, 422, "timestamp-skew")
    assert rows(node) == [(0,)]


@pytest.mark.parametrize(
    ("raw", "content_type", "status", "slug"),
    [
        (b'{"app": ', "application/json", 400, "malformed-body"),
        (b"\xff\xfe{}", "application/json", 400, "malformed-body"),
        (b"\xc1", "application/msgpack", 400, "malformed-body"),
        (b"<event/>", "application/xml", 415, "unsupported-media-type"),
        (b'"just a string"', "application/json", 400, "invalid-event"),
        (b"[]", "application/json", 400, "invalid-event"),
        (b'{"events": 5}', "application/json", 400, "invalid-event"),
    ],
)
async def test_bad_bodies(node: RunningNode, raw: bytes, content_type: str, status: int, slug: str) -> None:
    got, body, _ = await post(node, None, raw=raw, content_type=content_type)
    assert_problem(got, body, status, slug)
    assert rows(node) == [(0,)]


async def test_oversized_bodies_and_batches(node: RunningNode) -> None:
    huge = b'{"pad": "' + b"x" * (1024 * 1024 + 10) + b'"}'
    status, body, _ = await post(node, None, raw=huge)
    assert_problem(status, body, 413, "payload-too-large")
    status, body, _ = await post(node, [make_event(i) for i in range(1001)])
    assert_problem(status, body, 413, "batch-too-large")
    assert rows(node) == [(0,)]


async def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    settings = node_settings(tmp_path, rate_limit={"requests_per_second": 1, "burst": 3})
    async with run_node(settings) as running:
        statuses = []
        for i in range(6):
            status, body, headers = await post(running, make_event(i))
            statuses.append(status)
            if status == 429:
                assert_problem(status, body, 429, "rate-limited")
                assert int(headers["Retry-After"]) >= 1
        assert statuses[:3] == [202, 202, 202]
        assert 429 in statuses[3:]
        accepted = statuses.count(202)
        assert rows(running) == [(accepted,)]


async def test_rate_limit_keys_an_ipv6_client_by_its_64(tmp_path: Path) -> None:
    """Review L3: 100 addresses of one /64 were 100 fresh buckets. Now they share one; other /64s do not."""
    settings = node_settings(
        tmp_path, rate_limit={"requests_per_second": 0.001, "burst": 3}, trusted_proxies=("127.0.0.1/32",)
    )
    async with run_node(settings) as running:
        one_64 = [f"2001:db8:0:7::{i:x}" for i in range(1, 21)] + ["2001:db8:0:7:ffff:ffff:ffff:ffff"]
        statuses = [(await post(running, make_event(i), headers={"X-Forwarded-For": a}))[0] for i, a in enumerate(one_64)]
        assert statuses.count(202) == 3 and statuses.count(429) == len(one_64) - 3, statuses
        # Neighbouring /64s and IPv4 neighbours are other clients, each with a full bucket.
        for i, other in enumerate(["2001:db8:0:6::1", "2001:db8:0:8::1", "203.0.113.1", "203.0.113.2"]):
            status, _, _ = await post(running, make_event(100 + i), headers={"X-Forwarded-For": other})
            assert status == 202, other
        # A dual-stack form of an IPv4 client is that IPv4 client, not a member of the ::/64.
        status, _, _ = await post(running, make_event(200), headers={"X-Forwarded-For": "::ffff:198.51.100.9"})
        assert status == 202
        status, _, _ = await post(running, make_event(201), headers={"X-Forwarded-For": "::ffff:198.51.100.10"})
        assert status == 202


async def test_cors_preflight_and_origin_policy(tmp_path: Path) -> None:
    settings = node_settings(tmp_path, cors_origins=("https://tools.example.org",))
    async with run_node(settings) as running, aiohttp.ClientSession() as session:
        headers = {"Origin": "https://tools.example.org", "Access-Control-Request-Method": "POST"}
        async with session.options(running.url + "/v1/events", headers=headers) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == "https://tools.example.org"
            assert "POST" in resp.headers["Access-Control-Allow-Methods"]
        status, _, headers_out = await post(running, make_event(), headers={"Origin": "https://tools.example.org"})
        assert status == 202 and headers_out["Access-Control-Allow-Origin"] == "https://tools.example.org"
        status, body, _ = await post(running, make_event(1), headers={"Origin": "https://evil.example"})
        assert_problem(status, body, 403, "origin-not-allowed")
        assert rows(running) == [(1,)]


async def test_plausible_tracker_request_lands_as_an_event(tmp_path: Path) -> None:
    settings = node_settings(
        tmp_path,
        plausible={"domains": {"runway.example.org": "runway-calculator"}, "events": {"pageview": "start"}},
    )
    async with run_node(settings) as running:
        ua = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Test/1.0"}
        for name in ("plausible_pageview.json", "plausible_custom_event.json"):
            raw = (FIXTURES / name).read_bytes()
            status, body, headers = await post(running, None, raw=raw, path="/api/event", content_type="text/plain", headers=ua)
            assert status == 202 and body == "ok"
            assert "x-plausible-dropped" not in headers
        stored = rows(running, "SELECT action, a_runway_months, a_industry FROM events ORDER BY seq")
        assert stored == [("start", None, None), ("calculate", "6..9", "tech")]
        # Same IP + User-Agent + domain on the same day: one session, as Plausible counts visitors.
        assert rows(running, "SELECT count(DISTINCT session) FROM events") == [(1,)]
        # Unknown domain, undeclared event name: 202 and the dropped header, nothing stored.
        for payload in ({"n": "pageview", "u": "https://other.example/", "d": "other.example"},
                        {"name": "signup", "url": "https://runway.example.org/", "domain": "runway.example.org"}):
            status, body, headers = await post(running, payload, path="/api/event", content_type="text/plain")
            assert status == 202 and body == "ok" and headers["x-plausible-dropped"] == "1"
        status, body, _ = await post(running, {"d": "runway.example.org"}, path="/api/event")
        assert_problem(status, body, 400, "invalid-event")
        assert rows(running) == [(2,)]


async def test_geoip_lookup_behind_a_trusted_proxy(tmp_path: Path, geoip_db: Path) -> None:
    settings = node_settings(tmp_path, geoip_database=geoip_db, trusted_proxies=("127.0.0.1/32",))
    async with run_node(settings) as running:
        event = make_event()
        del event["geo_hint"]
        status, _, _ = await post(running, event, headers={"X-Forwarded-For": "203.0.113.77"})
        assert status == 202
        status, _, _ = await post(running, make_event(1, geo_hint=None), headers={"X-Forwarded-For": "2001:db8::77"})
        assert status == 202
        status, _, _ = await post(running, make_event(2, geo_hint=None), headers={"X-Forwarded-For": "198.51.100.1"})
        assert status == 202
        assert rows(running, "SELECT country FROM events ORDER BY seq") == [("DE",), ("BR",), ("ZZ",)]


async def test_operations_endpoints(node: RunningNode) -> None:
    await post(node, [make_event(i) for i in range(12)])
    await post(node, [make_event(i, app="cognitive-debt-assessment", action="start", attributes={}) for i in range(3)])
    async with aiohttp.ClientSession() as session:
        async with session.get(node.url + "/healthz") as resp:
            health = await resp.json()
            assert resp.status == 200 and health["status"] == "ok"
            assert health["key_id"] == node.node.key.public.key_id
        async with session.get(node.url + "/metrics") as resp:
            assert resp.status == 404  # exact counters are the operator's: never on the public port
        async with session.get(node.metrics_url + "/metrics") as resp:
            text = await resp.text()
            assert "liberation_node_events_accepted_total 15.0" in text
            assert "liberation_node_rows 15.0" in text
            assert "liberation_node_commit_seconds_count" in text
            memory = next(line for line in text.splitlines() if line.startswith("liberation_node_db_memory_bytes "))
            assert float(memory.split()[1]) > 0
        async with session.get(node.url + "/v1/local/summary") as resp:
            summary = await resp.json()
            # Nothing exported yet: today's window is open, and nothing un-noised is ever shown.
            assert resp.status == 200 and summary["windows"] == []
        async with session.get(node.url + "/js/liberation.js") as resp:
            assert resp.status == 200 and resp.content_type == "application/javascript"


async def test_the_fast_and_the_exact_path_store_the_same_rows(node: RunningNode) -> None:
    """One batch three ways: JSON and msgpack (fast path), and with timestamps only the exact path parses."""
    now = datetime.now(UTC)
    batch = [
        make_event(i, geo_hint=["DE", "br", None, "XX"][i % 4], attributes={
            "runway_months": [0.5, 7, 100, "many"][i % 4], "savings_band": ["<1k", "lots", "100k+", "5k-10k"][i % 4],
            "monthly_expenses": 2500 + i, "industry": ["tech", "farming", "retail", True][i % 4], "undeclared": i,
        }, timestamp=now.isoformat())
        for i in range(40)
    ]
    spaced = [dict(e, timestamp=now.isoformat(sep=" ")) for e in batch]
    answers = [
        await post(node, batch),
        await post(node, None, raw=msgpack.packb(batch), content_type="application/msgpack"),
        await post(node, spaced),
    ]
    assert [(status, body) for status, body, _ in answers] == [(202, {"accepted": 40, "dropped_attributes": 70})] * 3
    stored = rows(node, "SELECT * EXCLUDE (seq) FROM events ORDER BY seq")
    assert len(stored) == 120
    assert stored[:40] == stored[40:80] == stored[80:]
    assert {r[5] for r in stored} == {"DE", "BR", "ZZ"}  # hint, lower-case hint, no hint, invalid hint
