"""Columnar merged tables equal the dict ones, bit for bit and key order too, on random data."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
import pytest

from federation.service import close_hub, open_hub
from federation.settings import HubSettings
from federation.store import HubStore
from protocol.catalog import STAGES, Catalog, load_catalog
from protocol.keys import SigningKey
from tests.servers import admin_token
from tests.snapshots import DAY, envelope
from views.columns import Cells, CellTable, Layout, metric_items, sum_windows
from views.columns import apply_presence as apply_presence_cells
from views.insights import (
    STARTED,
    _geo_metric,
    _get,
    _grid_cells,
    _growth,
    _metric,
    _num,
    _significance,
    breakdown,
    completion,
    financial,
    geography,
    headline,
    peak_times,
    session_shape,
    tool_combinations,
    usage,
    weekday,
)
from views.merge import (
    CellKey,
    CellSum,
    ReadTable,
    Table,
    apply_presence,
    combine_windows,
    fold_sums,
)
from views.ranges import VIEWS, StoreRanges, ViewService

CATALOG = load_catalog()
LAYOUT = Layout.from_catalog(CATALOG)
NOW = datetime(2026, 11, 24, 12, tzinfo=UTC).timestamp()
TODAY = int(NOW) // DAY * DAY


def random_table(rng: random.Random, *, density: float, huge: bool = False) -> Table:
    """Random keys of the catalog in a random order; values around presence thresholds, some negative; fractional
    variances of one to a few hundred snapshots' noise."""
    keys: list[CellKey] = [key for key in LAYOUT.keys if rng.random() < density]
    rng.shuffle(keys)
    top = 2**61 if huge else 6_000
    return {key: CellSum(rng.randint(-top // 4, top), rng.random() * 2e6, rng.randint(1, 9)) for key in keys}


@pytest.mark.parametrize("seed", range(40))
def test_window_sums_and_presence_equal_the_dict_functions(seed: int) -> None:
    rng = random.Random(seed)
    tables = [random_table(rng, density=rng.choice([0.05, 0.5, 0.95]), huge=seed % 10 == 9) for _ in range(rng.randint(0, 12))]
    expected_sum = combine_windows(tables)
    expected = apply_presence(CATALOG, expected_sum)
    summed = sum_windows(LAYOUT, [Cells.from_table(LAYOUT, t) for t in tables])
    assert list(CellTable(LAYOUT, summed).items()) == list(expected_sum.items())
    got = CellTable(LAYOUT, apply_presence_cells(LAYOUT, summed, CATALOG))
    assert list(got.items()) == list(expected.items())  # same keys, same order, same bits
    assert all(type(cs.value) is int and type(cs.variance) is float and type(cs.nodes) is int for cs in got.values())


@pytest.mark.parametrize("seed", range(12))
def test_a_cell_table_reads_as_its_dict(seed: int) -> None:
    """Every read the insights make of a `CellTable` answers as the dict it stands for: keys, order, sums, types."""
    rng = random.Random(seed)
    table = random_table(rng, density=rng.choice([0.0, 0.05, 0.5, 1.0]), huge=seed % 4 == 3)
    names = [m.name for m in CATALOG.metrics]
    for metrics in (None, rng.sample(names, 3), ["no_such_metric"]):
        expected = table if metrics is None else {key: cs for key, cs in table.items() if key[0] in metrics}
        got = CellTable(LAYOUT, Cells.from_table(LAYOUT, table), metrics)
        assert list(got) == list(expected) and len(got) == len(expected)
        assert list(got.items()) == list(expected.items()) and dict(got) == expected
        assert all(type(cs.value) is int and type(cs.variance) is float for _, cs in got.items())
        for key in rng.sample(LAYOUT.keys, 200):
            assert got.get(key) == expected.get(key) and (key in got) == (key in expected)
            if key in expected:
                assert got[key] == expected[key]
            else:
                with pytest.raises(KeyError):
                    got[key]
        assert got.get(("no_such_metric", "cell", 0)) is None and ("usage_events", "cell", 10_000) not in got
        for name in [*names, "no_such_metric"]:
            assert metric_items(got, name) == metric_items(expected, name) == [
                (key, cs) for key, cs in expected.items() if key[0] == name]


def test_a_key_outside_the_catalog_is_refused() -> None:
    with pytest.raises(ValueError):
        Cells.from_table(LAYOUT, {("usage_events", "cell", 10_000): CellSum(1, 1.0, 1)})
    with pytest.raises(ValueError):
        Cells.from_table(LAYOUT, {("no_such_metric", "cell", 0): CellSum(1, 1.0, 1)})


# ---- views over a hub store: the cached columnar path against the straightforward dict computation ----


def reference_trends(
    catalog: Catalog, tables_by_window: Mapping[int, ReadTable], raw_by_window: Mapping[int, ReadTable]
) -> dict[str, Any]:
    """`insights.trends` as it was written over dict tables, before it went columnar: the oracle."""
    windows = sorted(tables_by_window)
    stages = _metric(catalog, "completion", ("app", "stage"))
    tools: dict[str, Any] = {}
    for a, (app, app_spec) in enumerate(catalog.apps.items()):
        series = [_get(tables_by_window[w], stages, "cell", a * len(STAGES) + STARTED) for w in windows]
        every = [_get(raw_by_window[w], stages, "cell", a * len(STAGES) + STARTED) for w in windows]
        tools[app] = {"title": app_spec.title, "series": [_num(cs) for cs in series],
                      "growth": _growth(every, _significance(catalog, stages))}
    geo, _ = _geo_metric(catalog)
    countries = catalog.domain("country")

    def per_country(tables: Mapping[int, ReadTable]) -> list[dict[str, CellSum]]:
        out: list[dict[str, CellSum]] = []
        for w in windows:
            sums: dict[str, CellSum] = {}
            for (_, c), cs in _grid_cells(tables[w], geo, len(countries)):
                sums[countries[c]] = fold_sums(sums.get(countries[c]), cs)
            out.append(sums)
        return out

    per_window, per_window_raw = per_country(tables_by_window), per_country(raw_by_window)
    totals: dict[str, CellSum] = {}
    for sums in per_window:
        for code, cs in sums.items():
            totals[code] = fold_sums(totals.get(code), cs)
    country_series = []
    for code in sorted(totals, key=lambda code: (-totals[code].value, code)):
        series = [sums.get(code) for sums in per_window]
        growth = _growth([sums.get(code) for sums in per_window_raw], _significance(catalog, geo))
        country_series.append({"country": code, "series": [_num(cs) for cs in series], "growth": growth})
    return {"windows": windows, "tools": tools, "countries": country_series}


def reference_view(store: HubStore, name: str, start: int, end: int) -> Any:
    """A view computed the straightforward way: dict tables (layout order) per window, summed, presence inferred."""
    con = store.cursor()
    rows = con.execute(
        "SELECT window_start, metric, kind, idx, value, variance, nodes FROM merged WHERE window_start >= ? AND window_start < ?",
        [start, end],
    ).fetchall()
    counts = dict(
        con.execute(
            "SELECT window_start, nodes FROM windows WHERE window_start >= ? AND window_start < ?", [start, end]
        ).fetchall()
    )
    rows.sort(key=lambda r: (r[0], LAYOUT.position[(r[1], r[2], r[3])]))
    tables: dict[int, Table] = {w: {} for w in sorted(counts)}
    for w, metric, kind, idx, value, variance, nodes in rows:
        tables[w][(metric, kind, idx)] = CellSum(value, variance, nodes)
    raw = combine_windows(tables.values())
    combined = apply_presence(CATALOG, raw)
    groups: dict[int, list[int]] = {}
    for w in tables:
        groups.setdefault(weekday(w), []).append(w)
    views: dict[str, Callable[[], Any]] = {
        "headline": lambda: headline(CATALOG, combined, windows=len(tables), nodes=max(counts.values(), default=0)),
        "usage": lambda: usage(CATALOG, combined),
        "completion": lambda: completion(CATALOG, combined),
        "tool-combinations": lambda: tool_combinations(CATALOG, combined),
        "session-shape": lambda: session_shape(CATALOG, combined, raw),
        "peak-times": lambda: peak_times(CATALOG, {
            ws[0]: apply_presence(CATALOG, combine_windows(tables[w] for w in ws)) for ws in groups.values()}),
        "geography": lambda: geography(CATALOG, combined, raw=raw),
        "financial": lambda: financial(CATALOG, combined, raw),
        "breakdown": lambda: breakdown(CATALOG, combined, raw=raw),
        "trends": lambda: reference_trends(CATALOG, {w: apply_presence(CATALOG, t) for w, t in tables.items()}, tables),
    }
    return json.loads(json.dumps(views[name](), allow_nan=False))


def write_windows(store: HubStore, rng: random.Random, windows: list[int]) -> None:
    """Random merged windows, as intake leaves them: cells summed over nodes, a node count per window."""
    rows = []
    for w in windows:
        nodes = rng.randint(1, 40)
        for (metric, kind, idx), cs in random_table(rng, density=rng.choice([0.3, 0.9])).items():
            rows.append((CATALOG.hash, w, metric, kind, idx, cs.value, cs.variance, min(cs.nodes, nodes)))
        with store.transaction() as tx:
            tx.execute("INSERT OR REPLACE INTO windows VALUES (?, ?, ?, ?)", [CATALOG.hash, w, w + DAY, nodes])
    rng.shuffle(rows)
    names = ["catalog", "window_start", "metric", "kind", "idx", "value", "variance", "nodes"]
    incoming = pa.table({name: [row[i] for row in rows] for i, name in enumerate(names)})
    with store.transaction() as tx:
        tx.register("incoming", incoming)
        tx.execute("INSERT INTO merged SELECT * FROM incoming")
        tx.unregister("incoming")


def test_cached_columnar_views_equal_the_straightforward_computation(tmp_path: Path) -> None:
    rng = random.Random(5)
    store = HubStore(tmp_path / "hub.duckdb")
    windows = [1_700_006_400 + d * DAY for d in range(12)]
    write_windows(store, rng, [w for w in windows if rng.random() < 0.85])
    service = ViewService(StoreRanges(store), {CATALOG.hash: CATALOG}, lambda: 0)
    for _ in range(6):
        a, b = sorted(rng.sample(windows, 2))
        for name in VIEWS:
            body, _ = service.render(name, CATALOG, a, b + DAY, "json")
            assert json.loads(body)["data"] == reference_view(store, name, a, b + DAY), (name, a, b)


def test_an_accepted_snapshot_invalidates_its_window(tmp_path: Path) -> None:
    """After intake, a range over the snapshot's window shows it: the window's cached columns are read again."""
    hub = open_hub(HubSettings(data_dir=tmp_path / "hub", metrics_port=0, admin_token=admin_token()), now=lambda: NOW)  # type: ignore[arg-type]
    keys = [SigningKey.generate() for _ in range(3)]
    for i, key in enumerate(keys):
        hub.registry.enroll(f"node-{i}", key.public)
    windows = [TODAY - d * DAY for d in range(4, 0, -1)]
    for i, key in enumerate(keys[:2]):
        for j, w in enumerate(windows):
            hub.intake.accept(envelope(key, w, seed=10 * i + j))
    start, end = windows[0], windows[-1] + DAY
    before = {name: hub.views.render(name, CATALOG, start, end, "json")[0] for name in VIEWS}
    hub.intake.accept(envelope(keys[2], windows[1], seed=99))  # one more node in one window of the range
    for name in VIEWS:
        after = json.loads(hub.views.render(name, CATALOG, start, end, "json")[0])
        assert after["data"] == reference_view(hub.store, name, start, end), name
        assert after != json.loads(before[name]), f"{name} is stale after intake"
    assert json.loads(hub.views.render("headline", CATALOG, start, end, "json")[0])["nodes"] == 3
    close_hub(hub)
