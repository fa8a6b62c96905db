"""Schemathesis against the node's and the hub's own OpenAPI documents, on loopback.

Each server runs in a background thread with its own event loop (schemathesis
calls synchronously), holding real data: the node has ingested events and
published a snapshot, the hub has enrolled nodes and merged their snapshots.
Every documented operation gets generated requests, valid and invalid, and
every answer must pass:

    not_a_server_error      no 5xx, ever
    problem_details         every 4xx is application/problem+json with type, title,
                            status (= the HTTP status) and detail
    status_code_conformance the status is one the document lists (node only: the
                            document is checked against the routes in test_node_openapi)

To make the node's positive cases reach the privacy filter and the store,
a share of the generated events get a declared app/action and the server's
time (random ones are refused by the catalog, which is tested too).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import status_code_conformance

from federation.openapi import openapi_document as hub_document
from federation.settings import HubSettings
from node.openapi import openapi_document as node_document
from protocol.catalog import load_catalog
from protocol.errors import PROBLEM_BASE, PROBLEM_CONTENT_TYPE
from protocol.keys import SigningKey
from tests.servers import admin_token, node_settings, run_hub, run_node
from tests.snapshots import DAY, envelope

MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "60"))  # per operation; 60: ~15 s in all
TOKEN = admin_token()
CATALOG = load_catalog()
APP_ACTIONS = [(app, action) for app, spec in CATALOG.apps.items() for action in spec.actions]

NODE_SCHEMA = schemathesis.openapi.from_dict(node_document())
HUB_SCHEMA = schemathesis.openapi.from_dict(hub_document())


@schemathesis.serializer("application/msgpack")
def _msgpack(ctx: Any, value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    try:
        return bytes(msgpack.packb(value, use_bin_type=True))
    except (OverflowError, TypeError, ValueError):  # e.g. integers past 64 bits: send what a broken client would
        return json.dumps(value).encode()


def problem_details(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> bool | None:
    """Every 4xx is an RFC 9457 problem: its content type, and type/title/status/detail."""
    status = response.status_code
    if not 400 <= status < 500:
        return None
    content_type = (response.headers.get("content-type") or [""])[0]
    assert content_type.split(";")[0] == PROBLEM_CONTENT_TYPE, f"{status} answered as {content_type!r}"
    body = json.loads(response.content or b"null")
    assert isinstance(body, dict) and {"type", "title", "status", "detail"} <= set(body), body
    assert body["status"] == status and str(body["type"]).startswith(PROBLEM_BASE), body
    assert isinstance(body["title"], str) and isinstance(body["detail"], str), body
    return None


# ---- servers in threads ---------------------------------------------------------------------


@dataclass
class Served:
    url: str
    samples: dict[str, Any]  # real values to mix into generated requests
    metrics_url: str = ""


@contextmanager
def in_thread(start: Callable[[], AbstractAsyncContextManager[Served]]) -> Iterator[Served]:
    """Enter `start()` on an event loop of its own, in a daemon thread, until the block ends."""
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def serve() -> None:
        try:
            async with start() as served:
                state["stop"], state["loop"], state["served"] = asyncio.Event(), asyncio.get_running_loop(), served
                ready.set()
                await state["stop"].wait()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            state["error"] = exc
            ready.set()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), name="schemathesis-server", daemon=True)
    thread.start()
    ready.wait(120)
    if "served" not in state:
        thread.join(5)
        raise RuntimeError(f"the server did not start: {state.get('error')!r}")
    try:
        yield state["served"]
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(60)


class MovableClock:
    """The real clock, shifted: the node ingests in a past day, then the clock moves on to close it."""

    def __init__(self, start: datetime) -> None:
        self.offset = start - datetime.now(UTC)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def move_to(self, moment: datetime) -> None:
        self.offset = moment - datetime.now(UTC)


def valid_event(i: int, moment: datetime) -> dict[str, Any]:
    app, action = APP_ACTIONS[i % len(APP_ACTIONS)]
    return {
        "app": app, "action": action, "timestamp": moment.isoformat(), "session_id": f"session-{i % 97:04d}",
        "attributes": {"industry": ("tech", "finance", "retail")[i % 3], "runway_months": i % 30,
                       "salary": 20_000 + 1_000 * (i % 150), "questions_answered": i % 25},
        "geo_hint": ("US", "DE", "BR", None)[i % 4],
    }


@asynccontextmanager
async def node_with_data(data_dir: Path) -> AsyncIterator[Served]:
    """A node that has ingested a day of events, exported it, and now runs on the real clock."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    clock = MovableClock(today - timedelta(days=2, hours=-12))
    settings_ = node_settings(data_dir, export_interval_seconds=0.2)
    async with run_node(settings_, clock=clock) as running, aiohttp.ClientSession() as session:
        for batch in range(4):
            events = [valid_event(100 * batch + i, clock()) for i in range(100)]
            async with session.post(running.url + "/v1/events", json=events) as resp:
                assert resp.status == 202, await resp.text()
        clock.move_to(datetime.now(UTC))
        for _ in range(200):  # the node's export loop closes the day within a few passes
            async with session.get(running.url + "/v1/snapshots") as resp:
                if (await resp.json())["snapshots"]:
                    break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the node did not export its closed window")
        published = (await resp.json())["snapshots"][0]["window_start"]
        yield Served(running.url, {"window": published[:10]}, running.metrics_url)


@asynccontextmanager
async def hub_with_data(data_dir: Path) -> AsyncIterator[Served]:
    """A hub with two enrolled nodes' snapshots for three days."""
    settings_ = HubSettings(data_dir=data_dir, port=0, metrics_port=0, admin_token=TOKEN, export_after_seconds=0)  # type: ignore[arg-type]
    today = int(datetime.now(UTC).timestamp()) // DAY * DAY
    pushed: list[bytes] = []
    async with run_hub(settings_) as running, aiohttp.ClientSession() as session:
        for n in range(2):
            key = SigningKey.generate()
            async with session.post(running.url + "/v1/admin/nodes", json={"name": f"node-{n}", "public_key": key.public.b64},
                                    headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                assert resp.status == 201, await resp.text()
            for d in (3, 2, 1):
                pushed.append(envelope(key, today - d * DAY, seed=10 * n + d))
                async with session.post(running.url + "/v1/snapshots", data=pushed[-1],
                                        headers={"Content-Type": "application/msgpack"}) as resp:
                    assert resp.status == 202, await resp.text()
        stranger = envelope(SigningKey.generate(), today - DAY)
        yield Served(running.url, {"envelopes": [*pushed, stranger], "catalog": CATALOG.hash})


@pytest.fixture(scope="module")
def node_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with in_thread(lambda: node_with_data(tmp_path_factory.mktemp("schemathesis-node"))) as served:
        yield served


@pytest.fixture(scope="module")
def hub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with in_thread(lambda: hub_with_data(tmp_path_factory.mktemp("schemathesis-hub"))) as served:
        yield served


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


# ---- the runs -------------------------------------------------------------------------------


def _seed(case: schemathesis.Case) -> int:
    """A number that varies with the generated case, to pick which cases get real values."""
    return zlib.crc32(repr((case.path_parameters, case.query, case.headers, case.body)).encode())


def _declared(body: Any, seed: int) -> Any:
    """Some events the catalog declares, at the server's time; the rest stay as generated."""
    if seed % 3 == 0 or not isinstance(body, dict | list):
        return body
    events = body["events"] if isinstance(body, dict) and isinstance(body.get("events"), list) else body
    for i, event in enumerate(events if isinstance(events, list) else [events]):
        if isinstance(event, dict) and {"app", "action", "timestamp"} <= set(event):
            event["app"], event["action"] = APP_ACTIONS[(seed + i) % len(APP_ACTIONS)]
            event["timestamp"] = datetime.now(UTC).isoformat()
    return body


RUN = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)


@NODE_SCHEMA.parametrize()
@RUN
def test_node_api(case: schemathesis.Case, node_server: Served, http: requests.Session) -> None:
    seed = _seed(case)
    if case.method == "POST" and case.path == "/v1/events" and case.media_type != "text/plain":
        case.body = _declared(case.body, seed)
    if case.path == "/v1/snapshots/{window}" and seed % 3 == 0:
        case.path_parameters = {"window": node_server.samples["window"]}
    case.call_and_validate(
        base_url=node_server.url, session=http, timeout=30,
        checks=[not_a_server_error, problem_details, status_code_conformance],
    )


@HUB_SCHEMA.parametrize()
@RUN
def test_hub_api(case: schemathesis.Case, hub_server: Served, http: requests.Session) -> None:
    seed = _seed(case)
    headers = {"Authorization": f"Bearer {TOKEN}"} if "/admin/" in case.path and seed % 3 else None
    if case.method == "POST" and case.path == "/v1/snapshots" and seed % 3 == 0:
        envelopes = hub_server.samples["envelopes"]
        case.body = envelopes[seed % len(envelopes)]  # a replay (200) or an unenrolled key (403)
    if case.query and "catalog" in case.query and seed % 2:
        case.query["catalog"] = hub_server.samples["catalog"]
    case.call_and_validate(
        base_url=hub_server.url, session=http, headers=headers, timeout=30,
        checks=[not_a_server_error, problem_details],
    )


def test_generated_events_reached_the_store(node_server: Served, http: requests.Session) -> None:
    """The runs above were not all refusals: generated events went through the filter into the store."""
    text = http.get(node_server.metrics_url + "/metrics", timeout=30).text
    accepted = next(
        float(line.split()[-1]) for line in text.splitlines() if line.startswith("liberation_node_events_accepted_total")
    )
    assert accepted > 400  # the 400 of the setup, and some of schemathesis'


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param("GET", "/v1/views/usage?to=0001-01-01", None, id="view-range-before-year-1"),
        pytest.param("POST", "/v1/admin/nodes", "[" * 100_000, id="enrollment-nested-too-deeply"),
    ],
)
def test_hub_regressions(hub_server: Served, http: requests.Session, method: str, path: str, body: str | None) -> None:
    """Cases schemathesis and the fuzzers found (5xx before the fix), kept as fixed examples."""
    resp = http.request(method, hub_server.url + path, data=body, timeout=30,
                        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    assert resp.status_code < 500
    if resp.status_code >= 400:
        assert resp.headers["Content-Type"].startswith(PROBLEM_CONTENT_TYPE)
