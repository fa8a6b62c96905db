"""Hub views on a real server: every view, JSON and CSV, ETags, the OpenAPI document, hub of hubs."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from federation.settings import HubSettings
from protocol.catalog import load_catalog
from protocol.envelope import verify_envelope
from protocol.keys import SigningKey
from tests.servers import RunningHub, admin_token, run_hub
from tests.snapshots import DAY, envelope
from views.merge import snapshot_table
from views.ranges import VIEWS

TOKEN = admin_token()
NOW = datetime(2026, 11, 24, 12, tzinfo=UTC).timestamp()
TODAY = int(NOW) // DAY * DAY
WINDOWS = [TODAY - d * DAY for d in range(5, 0, -1)]
CATALOG = load_catalog()


async def enroll(url: str, name: str, public_b64: str, kind: str = "node") -> None:
    async with aiohttp.ClientSession() as s, s.post(
        url + "/v1/admin/nodes", json={"name": name, "public_key": public_b64, "kind": kind},
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as resp:
        assert resp.status == 201, await resp.text()


async def push(url: str, data: bytes) -> int:
    async with aiohttp.ClientSession() as s, s.post(
        url + "/v1/snapshots", data=data, headers={"Content-Type": "application/msgpack"}
    ) as resp:
        return resp.status


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[RunningHub]:
    settings = HubSettings(data_dir=tmp_path / "hub", port=0, metrics_port=0, admin_token=TOKEN, export_after_seconds=0)  # type: ignore[arg-type]
    async with run_hub(settings, now=lambda: NOW) as running:
        keys = [SigningKey.generate() for _ in range(3)]
        for i, key in enumerate(keys):
            await enroll(running.url, f"node-{i}", key.public.b64)
            for j, w in enumerate(WINDOWS):
                assert await push(running.url, envelope(key, w, seed=10 * i + j)) == 202
        yield running


async def get(url: str, **kwargs: Any) -> tuple[int, Any, Any]:
    async with aiohttp.ClientSession() as s, s.get(url, **kwargs) as resp:
        body = await resp.read()
        return resp.status, body, resp.headers


def numbers(data: Any) -> list[dict[str, Any]]:
    if isinstance(data, dict) and set(data) == {"value", "sd", "nodes"}:
        return [data]
    if isinstance(data, dict):
        return [n for v in data.values() for n in numbers(v)]
    if isinstance(data, list):
        return [n for v in data for n in numbers(v)]
    return []


@pytest.mark.parametrize("name", list(VIEWS))
async def test_every_view_answers_json_and_csv(hub: RunningHub, name: str) -> None:
    status, body, headers = await get(hub.url + f"/v1/views/{name}")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    import json

    doc = json.loads(body)
    assert doc["view"] == name and doc["windows"] == 5 and doc["nodes"] == 3
    assert (doc["from"], doc["to"]) == ("2026-10-25", "2026-11-23")  # 30 days up to the latest data
    found = numbers(doc["data"])
    assert found, f"{name} shows no number"
    assert all(n["sd"] >= 0 and n["nodes"] >= 1 for n in found)
    status, body, headers = await get(hub.url + f"/v1/views/{name}?format=csv")
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(body.decode())))
    assert rows[0] == ["key", "value", "sd", "nodes"] and len(rows) > 1
    status, _, headers2 = await get(hub.url + f"/v1/views/{name}", headers={"Accept": "text/csv"})
    assert headers2["Content-Type"].startswith("text/csv")


async def test_headline_matches_the_merged_cells(hub: RunningHub) -> None:
    import json

    _, body, _ = await get(hub.url + "/v1/views/headline")
    headline = json.loads(body)["data"]
    total = 0
    for w in WINDOWS:
        _, merged, _ = await get(hub.url + f"/v1/merged/{datetime.fromtimestamp(w, UTC):%Y-%m-%d}")
        tools = json.loads(merged)["metrics"]["session_tools"]
        total += sum(c["value"] for c in tools["cells"] + tools["other"])
    # The headline re-thresholds the range sum, which moves nothing here (every sum is large).
    assert headline["sessions"]["value"] == total


async def test_etag_cache_and_errors(hub: RunningHub) -> None:
    status, _, headers = await get(hub.url + "/v1/views/usage")
    etag = headers["ETag"]
    assert headers["Cache-Control"].startswith("public")
    status, _, _ = await get(hub.url + "/v1/views/usage", headers={"If-None-Match": etag})
    assert status == 304
    status, _, headers = await get(hub.url + "/v1/views/usage?from=2026-11-20&to=2026-11-22")
    assert status == 200 and headers["ETag"] != etag
    for bad in ("/v1/views/nope", "/v1/views/usage?from=yesterday", "/v1/views/usage?from=2026-11-22&to=2026-11-01",
                "/v1/views/usage?format=xml", "/v1/views/usage?catalog=" + "0" * 64, "/v1/merged/2001-01-01"):
        status, body, headers = await get(hub.url + bad)
        assert status in (400, 404) and headers["Content-Type"].startswith("application/problem+json"), bad


async def test_openapi_matches_the_routes(hub: RunningHub) -> None:
    import json

    _, body, _ = await get(hub.url + "/openapi.json")
    doc = json.loads(body)
    documented = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    routed = {
        (route.method, re.sub(r"\{(\w+)\}", r"{\1}", route.resource.canonical))
        for route in hub.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert documented == routed
    view_names = next(p for p in doc["paths"]["/v1/views/{name}"]["get"]["parameters"] if p["name"] == "name")
    assert view_names["schema"]["enum"] == list(VIEWS)
    for method, path in sorted(documented):
        if method == "GET" and "{" not in path and "admin" not in path and path != "/v1/export":
            status, _, _ = await get(hub.url + path)
            assert status == 200, path


async def test_hub_of_hubs(hub: RunningHub, tmp_path: Path) -> None:
    day = datetime.fromtimestamp(WINDOWS[0], UTC).strftime("%Y-%m-%d")
    status, exported, headers = await get(hub.url + f"/v1/export?window={day}")
    assert status == 200 and headers["Content-Type"] == "application/msgpack"
    status, again, _ = await get(hub.url + f"/v1/export?window={day}")
    assert again == exported  # committed once
    verified = verify_envelope(exported)
    assert verified.snapshot.node == hub.hub.key.public.key_id and verified.snapshot.nodes == 3
    parent_settings = HubSettings(data_dir=tmp_path / "parent", port=0, metrics_port=0, admin_token=TOKEN)  # type: ignore[arg-type]
    async with run_hub(parent_settings, now=lambda: NOW) as parent:
        assert await push(parent.url, exported) == 403  # not enrolled yet
        await enroll(parent.url, "child-hub", hub.hub.key.public.b64, kind="hub")
        assert await push(parent.url, exported) == 202
        assert await push(parent.url, exported) == 200
        rows = parent.hub.store.cursor().execute(
            "SELECT metric, kind, idx, value FROM merged WHERE window_start = ?", [WINDOWS[0]]
        ).fetchall()
        child = hub.hub.store.cursor().execute(
            "SELECT metric, kind, idx, value, variance, nodes FROM merged WHERE window_start = ?", [WINDOWS[0]]
        ).fetchall()
        from views.merge import CellSum

        # The child publishes every merged cell: the parent holds the same sums and infers presence itself.
        expected = {(m, k, int(i)): CellSum(int(v), float(var), int(n)) for m, k, i, v, var, n in child}
        assert {(m, k, int(i)): int(v) for m, k, i, v in rows} == {key: cs.value for key, cs in expected.items()}
        assert parent.hub.store.cursor().execute("SELECT nodes FROM windows").fetchall() == [(3,)]
        assert snapshot_table(verified.snapshot, CATALOG)  # the parent's view of the child is a normal table
    status, _, _ = await get(hub.url + "/v1/export?window=2001-01-01")
    assert status == 404


async def test_a_stored_envelope_is_served_as_accepted(hub: RunningHub) -> None:
    """What a node whose database was restored from before an export adopts instead of noising again."""
    key = SigningKey.generate()
    await enroll(hub.url, "restored", key.public.b64)
    sent = envelope(key, WINDOWS[0], seed=77)
    assert await push(hub.url, sent) == 202
    day = datetime.fromtimestamp(WINDOWS[0], UTC).strftime("%Y-%m-%d")
    for window in (day, str(WINDOWS[0])):
        status, body, headers = await get(hub.url + f"/v1/snapshots/{key.public.key_id}/{window}")
        assert (status, body, headers["Content-Type"]) == (200, sent, "application/msgpack")
        assert "immutable" in headers["Cache-Control"]
    for path, status, slug in (
        (f"/v1/snapshots/{key.public.key_id}/{datetime.fromtimestamp(WINDOWS[1], UTC):%Y-%m-%d}", 404, "no-snapshot"),
        (f"/v1/snapshots/{SigningKey.generate().public.key_id}/{day}", 404, "no-snapshot"),
        (f"/v1/snapshots/{key.public.key_id.upper()}/{day}", 400, "invalid-key"),
        (f"/v1/snapshots/{key.public.key_id}/yesterday", 400, "invalid-window"),
    ):
        answer, body, headers = await get(hub.url + path)
        assert answer == status and headers["Content-Type"].startswith("application/problem+json"), path
        assert json.loads(body)["type"].endswith("/" + slug)
