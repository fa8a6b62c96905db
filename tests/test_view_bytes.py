"""Every view's JSON and CSV bytes, as a hub and a node serve them, equal what the dict tables give (the oracle).

The views read merged cells as columns (views/columns.py); the dict functions of
views/merge.py are the straightforward computation they must match byte for byte:
several nodes, windows with and without every node, cells both shown and folded.
"""

from __future__ import annotations

import json
import random
from collections.abc import Collection, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import pytest

from federation.service import Hub, close_hub, open_hub
from federation.settings import HubSettings
from protocol.catalog import Catalog, load_catalog
from protocol.keys import SigningKey
from tests.servers import admin_token
from tests.snapshots import DAY, envelope, node_snapshot
from views.columns import Cells, Layout
from views.insights import weekday
from views.merge import CellSum, Table, apply_presence, combine_windows, snapshot_table
from views.ranges import VIEWS, RangeData, ViewService
from views.tidy import tidy_csv

CATALOG = load_catalog()
LAYOUT = Layout.from_catalog(CATALOG)
NOW = datetime(2026, 11, 24, 12, tzinfo=UTC).timestamp()
TODAY = int(NOW) // DAY * DAY
WINDOWS = [TODAY - d * DAY for d in range(16, 0, -1)]  # more than two of every weekday
NODES = 4


def true_counts(rng: random.Random) -> Mapping[str, list[int]]:
    """One node's true counts: most cells empty or near the presence bounds, some large."""
    choices = [0, 0, 0, 2, 8, 25, 60, 150, 400, 3_000]
    return {m.name: [rng.choice(choices) for _ in range(CATALOG.domain_size(m))] for m in CATALOG.metrics}


class WindowTables:
    """A window's dict tables, held as `WindowCells` holds its columns (trends reads columns of both)."""

    def __init__(self, table: Table) -> None:
        self.cells = Cells.from_table(LAYOUT, table)


class DictRange:
    """What `RangeData` gives the views, computed over dict tables with views/merge.py's functions."""

    def __init__(self, start: int, end: int, tables: Mapping[int, Table], nodes: int) -> None:
        self.catalog, self.layout, self.start, self.end, self.nodes = CATALOG, LAYOUT, start, end, nodes
        self.tables = {w: tables[w] for w in sorted(tables)}
        self.per_window = {w: WindowTables(t) for w, t in self.tables.items()}
        self.raw = combine_windows(self.tables.values())
        self.combined = apply_presence(CATALOG, self.raw)

    def raw_of(self, metrics: Collection[str]) -> Table:
        return _only(self.raw, metrics)

    def by_weekday(self, metrics: Collection[str] | None = None) -> dict[int, Table]:
        groups: dict[int, list[int]] = {}
        for w in self.tables:
            groups.setdefault(weekday(w), []).append(w)
        return {
            ws[0]: _only(apply_presence(CATALOG, combine_windows(self.tables[w] for w in ws)), metrics)
            for ws in groups.values()
        }

    def thresholded_windows(self) -> dict[int, Cells]:
        return {w: Cells.from_table(LAYOUT, apply_presence(CATALOG, t)) for w, t in self.tables.items()}


def _only(table: Table, metrics: Collection[str] | None) -> Table:
    return dict(table) if metrics is None else {key: cs for key, cs in table.items() if key[0] in metrics}


class DictSource:
    """A range source over dict tables per window: the oracle's (`dict_range`), or `RangeData.from_tables` (a node's)."""

    def __init__(self, tables: Mapping[int, Table], counts: Mapping[int, int], *, oracle: bool) -> None:
        self.tables, self.counts, self.oracle = tables, counts, oracle

    def latest_window(self, catalog: Catalog) -> int | None:
        return max(self.tables, default=None)

    def load(self, catalog: Catalog, start: int, end: int) -> RangeData:
        tables = {w: t for w, t in self.tables.items() if start <= w < end}
        nodes = max((self.counts[w] for w in tables), default=0)
        if self.oracle:
            return cast(RangeData, DictRange(start, end, tables, nodes))
        return RangeData.from_tables(catalog, LAYOUT, start, end, tables, nodes)


def merged_tables(hub: Hub) -> tuple[dict[int, Table], dict[int, int]]:
    """The hub's merged windows as dict tables in layout order (as the hub reads them), and their node counts."""
    con = hub.store.cursor()
    rows = con.execute("SELECT window_start, metric, kind, idx, value, variance, nodes FROM merged").fetchall()
    rows.sort(key=lambda r: (r[0], LAYOUT.position[(r[1], r[2], r[3])]))
    tables: dict[int, Table] = {}
    for w, metric, kind, idx, value, variance, nodes in rows:
        tables.setdefault(int(w), {})[(metric, kind, int(idx))] = CellSum(int(value), float(variance), int(nodes))
    counts = {int(w): int(n) for w, n in con.execute("SELECT window_start, nodes FROM windows").fetchall()}
    return tables, counts


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """A hub with NODES nodes over WINDOWS: each node misses some windows, one window has a single node."""
    rng = random.Random(23)
    path: Path = tmp_path_factory.mktemp("hub")
    hub = open_hub(HubSettings(data_dir=path / "hub", metrics_port=0, admin_token=admin_token()), now=lambda: NOW)
    keys = [SigningKey.generate() for _ in range(NODES)]
    for i, key in enumerate(keys):
        hub.registry.enroll(f"node-{i}", key.public)
        counts = true_counts(rng)
        for j, w in enumerate(WINDOWS):
            if (j == 3 and i > 0) or (j != 3 and i > 0 and rng.random() < 0.2):
                continue
            hub.intake.accept(envelope(key, w, seed=100 * i + j, counts=lambda m, k, c=counts: c[m][k]))
    try:
        yield hub
    finally:
        close_hub(hub)


RANGES = [
    (WINDOWS[0], WINDOWS[-1] + DAY),  # every window
    (WINDOWS[3], WINDOWS[3] + DAY),  # one window, one node
    (WINDOWS[5], WINDOWS[5] + DAY),  # one window
    (WINDOWS[2], WINDOWS[10] + DAY),  # some windows, more than one of a weekday
    (WINDOWS[0] - 9 * DAY, WINDOWS[0] - DAY),  # no data
]


def test_hub_views_are_the_dict_tables_views_byte_for_byte(hub: Hub) -> None:
    tables, counts = merged_tables(hub)
    assert len(tables) == len(WINDOWS) and counts[WINDOWS[3]] == 1 and max(counts.values()) == NODES
    oracle = ViewService(DictSource(tables, counts, oracle=True), {CATALOG.hash: CATALOG}, lambda: 0)
    folded = 0
    for start, end in RANGES:
        for name in VIEWS:
            for fmt in ("json", "csv"):
                ours, _ = hub.views.render(name, CATALOG, start, end, fmt)
                theirs, _ = oracle.render(name, CATALOG, start, end, fmt)
                assert ours == theirs, (name, fmt, start, end)
                if fmt == "json":  # trends' text is assembled from parts kept with the windows (VIEW_JSON)
                    assert ours == json.dumps(json.loads(ours), allow_nan=False).encode(), (name, start, end)
        data = hub.views._source.load(CATALOG, start, end)
        expected = cast(DictRange, oracle._source.load(CATALOG, start, end))
        for metrics in (list(CATALOG.metrics), [CATALOG.metrics[-1], CATALOG.metrics[0]]):
            assert tidy_csv(data, metrics) == tidy_csv(cast(RangeData, expected), metrics)
        folded += sum(1 for key in expected.raw if key not in expected.combined)
    assert folded > 100  # presence folded cells: the fixture exercises both sides of the bound


def test_node_views_are_the_dict_tables_views_byte_for_byte() -> None:
    """A node's own snapshots (`RangeData.from_tables`, keys in snapshot order rather than layout order)."""
    rng = random.Random(29)
    key = SigningKey.generate()
    counts = true_counts(rng)
    tables = {
        w: snapshot_table(node_snapshot(key, w, seed=j, counts=lambda m, k: counts[m][k]), CATALOG)
        for j, w in enumerate(WINDOWS) if j % 5 != 4
    }
    for w in list(tables)[::2]:  # keys in another order than the layout's: the order floats add in must follow
        items = list(tables[w].items())
        rng.shuffle(items)
        tables[w] = dict(items)
    ones = dict.fromkeys(tables, 1)
    node = ViewService(DictSource(tables, ones, oracle=False), {CATALOG.hash: CATALOG}, lambda: 0)
    oracle = ViewService(DictSource(tables, ones, oracle=True), {CATALOG.hash: CATALOG}, lambda: 0)
    for start, end in RANGES:
        for name in VIEWS:
            for fmt in ("json", "csv"):
                assert node.render(name, CATALOG, start, end, fmt)[0] == oracle.render(name, CATALOG, start, end, fmt)[0], (
                    name, fmt, start, end)


@pytest.mark.parametrize("seed", range(3))
def test_views_over_uneven_tables_are_the_dict_tables_views_byte_for_byte(seed: int) -> None:
    """Tables whose sums rest on unlike variances and whose keys come in any order: float sums must add as the dicts add."""
    rng = random.Random(seed)
    tables: dict[int, Table] = {}
    for w in WINDOWS:
        keys = [key for key in LAYOUT.keys if rng.random() < 0.8]
        rng.shuffle(keys)
        tables[w] = {key: CellSum(rng.randint(-500, 6_000), rng.random() * 2e5, rng.randint(1, 9)) for key in keys}
    counts = {w: rng.randint(1, 9) for w in tables}
    ours = ViewService(DictSource(tables, counts, oracle=False), {CATALOG.hash: CATALOG}, lambda: 0)
    oracle = ViewService(DictSource(tables, counts, oracle=True), {CATALOG.hash: CATALOG}, lambda: 0)
    for start, end in RANGES:
        for name in VIEWS:
            for fmt in ("json", "csv"):
                body = ours.render(name, CATALOG, start, end, fmt)[0]
                assert body == oracle.render(name, CATALOG, start, end, fmt)[0], (name, fmt, start, end)
                if fmt == "json":
                    assert body == json.dumps(json.loads(body), allow_nan=False).encode(), (name, start, end)
