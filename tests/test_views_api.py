"""The views API as analysts' tools use it: a tidy CSV `pandas.read_csv` takes as is, and CORS for GET."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from federation.settings import HubSettings
from protocol.keys import SigningKey
from tests.servers import RunningHub, run_hub
from tests.snapshots import envelope
from tests.test_hub_views import CATALOG, NOW, TOKEN, WINDOWS, enroll, get, push
from views.columns import CellTable, Layout
from views.ranges import RangeData

FROM, TO = "2026-11-19", "2026-11-23"
HEADER = ["window", "metric", "app_action", "country", "app", "hour", "app_pair", "stage", "tool_count", "duration",
          "runway_months", "real_wage_gap_pct", "savings_band", "industry", "salary", "monthly_expenses",
          "debt_level", "questions_answered", "value", "sd", "nodes"]


async def _hub(tmp_path: Path, **changes: object) -> AsyncIterator[RunningHub]:
    settings = HubSettings.model_validate(
        {"data_dir": tmp_path / "hub", "port": 0, "metrics_port": 0, "admin_token": TOKEN, **changes}
    )
    async with run_hub(settings, now=lambda: NOW) as running:
        keys = [SigningKey.generate() for _ in range(2)]
        for i, key in enumerate(keys):
            await enroll(running.url, f"node-{i}", key.public.b64)
            for j, w in enumerate(WINDOWS):
                assert await push(running.url, envelope(key, w, seed=10 * i + j)) == 202
        yield running


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[RunningHub]:
    async for running in _hub(tmp_path):
        yield running


def expected_rows(hub: RunningHub) -> list[dict[str, str]]:
    """The same rows, from the hub's range data and the catalog (an oracle independent of the CSV writer)."""
    data: RangeData = hub.hub.views._source.load(CATALOG, WINDOWS[0], WINDOWS[-1] + 86_400)
    layout = Layout.from_catalog(CATALOG)
    out = []
    for window, cells in data.thresholded_windows().items():
        for (name, kind, index), cs in CellTable(layout, cells).items():
            spec = CATALOG.metric(name)
            last = CATALOG.shape(spec)[-1]
            labels = CATALOG.cell_labels(spec, index if kind == "cell" else index * last)
            if kind == "other":
                labels = (*labels[:-1], "other")
            out.append({"window": f"{window}", "metric": name, "labels": "|".join(labels), "value": str(cs.value),
                        "sd": f"{math.sqrt(cs.variance):.3f}", "nodes": str(cs.nodes)})
    return out


async def test_cells_csv_is_tidy_one_row_per_window_and_shown_cell(hub: RunningHub) -> None:
    status, body, headers = await get(hub.url + f"/v1/cells?from={FROM}&to={TO}")
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert list(rows[0]) == HEADER
    assert {r["window"] for r in rows} == {FROM, "2026-11-20", "2026-11-21", "2026-11-22", TO}
    # Every row is one observation: its metric's dimensions filled, every other dimension column empty.
    dims = {m.name: [d.removeprefix("attr:") for d in m.dimensions] for m in CATALOG.metrics}
    for r in rows:
        assert all(r[c] != "" for c in dims[r["metric"]]) and all(r[c] == "" for c in HEADER[2:-3] if c not in dims[r["metric"]])
        assert int(r["value"]) == int(r["value"]) and float(r["sd"]) > 0 and int(r["nodes"]) == 2
    oracle = expected_rows(hub)
    ours = sorted((r["metric"], "|".join(r[c] for c in dims[r["metric"]]), r["value"], r["sd"], r["nodes"]) for r in rows)
    assert ours == sorted((o["metric"], o["labels"], o["value"], o["sd"], o["nodes"]) for o in oracle)
    # A cell that is not shown in a window has no row there: never a 0 written for "unknown".
    assert len(rows) < len(WINDOWS) * sum(CATALOG.domain_size(m) for m in CATALOG.metrics)
    # One metric, a few columns.
    status, body, _ = await get(hub.url + f"/v1/cells?from={FROM}&to={TO}&metric=geo_sessions")
    geo = list(csv.reader(io.StringIO(body.decode())))
    assert geo[0] == ["window", "metric", "country", "value", "sd", "nodes"]
    assert {r[1] for r in geo[1:]} == {"geo_sessions"}
    status, body, _ = await get(hub.url + "/v1/cells?metric=nope")
    assert status == 400 and b"invalid-query" in body
    status, _, headers = await get(hub.url + f"/v1/cells?from={FROM}&to={TO}&metric=geo_sessions")
    status, _, _ = await get(hub.url + f"/v1/cells?from={FROM}&to={TO}&metric=geo_sessions",
                             headers={"If-None-Match": headers["ETag"]})
    assert status == 304


async def test_pandas_reads_the_cells_as_is(hub: RunningHub) -> None:
    import pandas as pd

    _, body, _ = await get(hub.url + f"/v1/cells?from={FROM}&to={TO}&metric=usage_sessions")
    frame = pd.read_csv(io.BytesIO(body))
    assert list(frame.columns) == ["window", "metric", "app_action", "value", "sd", "nodes"]
    assert frame["value"].dtype.kind == "i" and frame["sd"].dtype.kind == "f"


async def test_views_answer_cross_origin_gets(hub: RunningHub) -> None:
    origin = {"Origin": "https://notebook.example"}
    for path in ("/v1/views/usage", f"/v1/cells?from={FROM}&to={TO}", "/v1/windows", "/v1/catalog", "/v1/views"):
        status, _, headers = await get(hub.url + path, headers=origin)
        assert status == 200 and headers["Access-Control-Allow-Origin"] == "*", path
        assert "ETag" in headers.get("Access-Control-Expose-Headers", "")
    # A bad range's problem is readable cross-origin too.
    status, _, headers = await get(hub.url + "/v1/views/usage?from=nope", headers=origin)
    assert status == 400 and headers["Access-Control-Allow-Origin"] == "*"
    async with aiohttp.ClientSession() as s, s.options(
        hub.url + "/v1/views/usage", headers={**origin, "Access-Control-Request-Method": "GET",
                                              "Access-Control-Request-Headers": "if-none-match"}) as resp:
        assert resp.status == 204 and resp.headers["Access-Control-Allow-Methods"] == "GET"
    # Never on intake, admin or the log.
    for path in ("/v1/admin/nodes", "/v1/log", "/healthz"):
        _, _, headers = await get(hub.url + path, headers=origin)
        assert "Access-Control-Allow-Origin" not in headers, path


async def test_views_cors_can_be_narrowed_or_turned_off(tmp_path: Path) -> None:
    async for hub in _hub(tmp_path / "a", views_cors_origins=["https://ours.example"]):
        _, _, headers = await get(hub.url + "/v1/windows", headers={"Origin": "https://ours.example"})
        assert headers["Access-Control-Allow-Origin"] == "https://ours.example" and headers["Vary"] == "Origin"
        _, _, headers = await get(hub.url + "/v1/windows", headers={"Origin": "https://theirs.example"})
        assert "Access-Control-Allow-Origin" not in headers
    async for hub in _hub(tmp_path / "b", views_cors_origins=[]):
        _, _, headers = await get(hub.url + "/v1/windows", headers={"Origin": "https://ours.example"})
        assert "Access-Control-Allow-Origin" not in headers
