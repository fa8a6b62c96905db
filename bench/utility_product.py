"""The utility bench's one door into the product: node import, true tables, export, hub merge and views.

Every step that decides a published or shown number is the product's own public
function, called here and nowhere else in the bench, so a change to node/noising.py,
node/windows.py, federation/intake.py or the release semantics touches this file only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from keeper.answer import keeper_noise
from node.noising import build_snapshot
from protocol.catalog import Catalog, load_catalog, parse_catalog
from protocol.noise import laplace_variance
from protocol.rounds import federation_vector
from protocol.windows import DAY, WINDOW_LENGTHS
from runtime.dp import opendp_laplace
from views.columns import Cells, Layout
from views.merge import (
    CellKey,
    CellSum,
    ReadTable,
    Table,
    combine_windows,
    fold_sums,
    merge_tables,
    snapshot_table,
)
from views.ranges import VIEWS, RangeData, WindowCells, round_cells

__all__ = [
    "CellKey", "CellSum", "ReadTable", "Table", "combine_windows", "fold_sums", "laplace", "noise_variance",
    "catalog", "catalog_file", "truth_identity", "with_weights", "import_history", "node_id", "publish_window",
    "hub_range", "render", "Shown", "round_window", "hub_range_with_rounds", "KEEPERS",
]

laplace = opendp_laplace
"""The product's only noise sampler (OpenDP discrete Laplace): the bench draws every noise value with it."""

noise_variance = laplace_variance


def catalog(window: str = "day") -> Catalog:
    """The catalog a node with default settings uses, or the same with weekly windows (`catalog_file`)."""
    default = load_catalog()
    if window == default.window:
        return default
    return parse_catalog({**default.model_dump(mode="json"), "window": window})


def catalog_file(window: str, directory: Path) -> Path | None:
    """A catalog TOML for the nodes of a federation of `window`s: None for the default catalog's own window.

    The default catalog's text with its `window` line changed, so the nodes load exactly what
    `catalog(window)` describes (the bench checks the hashes agree).
    """
    if window not in WINDOW_LENGTHS:
        raise ValueError(f"a window is one of {sorted(WINDOW_LENGTHS)}, not {window!r}")
    default = load_catalog()
    if window == default.window:
        return None
    text = (Path(__file__).resolve().parent.parent / "protocol" / "data" / "default_catalog.toml").read_text()
    line = f'window = "{default.window}"'
    if text.count(line) != 1:
        raise ValueError(f"the default catalog has no single `{line}` line to change")
    path = directory / f"catalog-{window}.toml"
    path.write_text(text.replace(line, f'window = "{window}"'))
    return path


def truth_identity(catalog: Catalog) -> str:
    """A digest of what decides a catalog's true tables: all of it but the metric weights (they only split epsilon)."""
    data = catalog.model_dump(mode="json")
    for metric in data["metrics"]:
        metric.pop("weight")
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def with_weights(base: Catalog, weights: Mapping[str, float]) -> Catalog:
    """The catalog with other metric weights (so another epsilon split); domains, bounds and windows unchanged."""
    data = base.model_dump(mode="json")
    data["metrics"] = [{**m, "weight": weights.get(m["name"], m["weight"])} for m in data["metrics"]]
    return parse_catalog(data)


def node_id(name: str) -> str:
    """A stable 32-hex node key id for a community (the id is a label here, no key is needed)."""
    return hashlib.sha256(name.encode()).hexdigest()[:32]


def import_history(
    lines: Iterable[str], data_dir: Path, *, windows: Sequence[int], today: datetime, catalog_path: Path | None = None
) -> tuple[str, dict[int, dict[str, list[int]]]]:
    """JSONL events through a fresh node's import path (filter, store, session fold); its true tables per window.

    As `liberation demo` imports history (`node import`'s code path), with the node's clock
    fixed an hour into `today`; `true_tables` is what `Publisher.export` noises. Returns the
    node's catalog hash and, per window start, every metric's bounded true counts.
    `catalog_path`: the nodes' catalog (`catalog_file`), None for the default.
    """
    from node.aggregate import true_tables
    from node.importer import import_lines
    from node.service import close_node, open_node
    from node.settings import NodeSettings

    days = (int(today.timestamp()) - min(windows)) // DAY
    node = open_node(
        NodeSettings(data_dir=data_dir, retention_days=days + 1, catalog=catalog_path),
        clock=lambda: today + timedelta(hours=1),
    )
    try:
        import_lines(node, lines)
        con = node.store.cursor()
        tables = {w: true_tables(con, node.catalog, w) for w in windows}
        return node.catalog.hash, tables
    finally:
        close_node(node)


def publish_window(
    catalog: Catalog, tables_by_node: Mapping[str, dict[str, list[int]]], *, window_start: int, seq: int
) -> Table:
    """Every node's snapshot of one window (OpenDP noise on every cell, all published), merged as the hub merges."""
    snapshots = [
        build_snapshot(
            catalog, tables, node=node, window_start=window_start, window_end=window_start + catalog.window_seconds,
            seq=seq, created=window_start + catalog.window_seconds,
        )
        for node, tables in tables_by_node.items()
    ]
    return merge_tables(snapshot_table(snapshot, catalog) for snapshot in snapshots)


KEEPERS = 2
"""Share keepers of the federation rounds, each adding one draw (the demo's and the docs' default)."""


class Round:
    """A published round's aggregate as the views read it (federation/rounds.py `PublishedRound`)."""

    def __init__(self, aggregate: np.ndarray[Any, Any], nodes: int, keepers: int) -> None:
        self.aggregate, self.nodes, self.keepers = aggregate, nodes, keepers


def round_window(catalog: Catalog, tables_by_node: Mapping[str, dict[str, list[int]]], *, keepers: int = KEEPERS) -> Round:
    """One window's federation round: every node's bounded vector summed, plus each keeper's noise.

    What the hub's combination gives (sum y_i + sum A_k = sum x_i + sum Z_k, exact:
    tests/test_rounds_e2e.py), without the masks and seals that cancel in it.
    """
    total = np.sum([np.array(federation_vector(catalog, t), dtype=np.int64) for t in tables_by_node.values()], axis=0)
    for _ in range(keepers):
        total = total + np.array(keeper_noise(catalog, opendp_laplace), dtype=np.int64)
    return Round(total, len(tables_by_node), keepers)


def hub_range_with_rounds(
    catalog: Catalog, merged_by_window: Mapping[int, ReadTable], rounds: Mapping[int, Round], nodes: int
) -> RangeData:
    """The hub's view input when rounds are published: each window's federation metrics from its round
    (views/ranges.py `RoundRanges`), the rest from the merged snapshots."""
    layout = Layout.from_catalog(catalog)
    scales = {m.name: catalog.federation_scale(m) for m in catalog.federation_metrics}
    per_window = {}
    for w in sorted(merged_by_window):
        base = Cells.from_table(layout, merged_by_window[w])
        per_window[w] = WindowCells(layout, catalog, round_cells(layout, catalog, base, rounds[w]), scales)
    start, end = min(merged_by_window), max(merged_by_window) + catalog.window_seconds
    return RangeData(catalog, layout, start, end, per_window, nodes)


def hub_range(catalog: Catalog, merged_by_window: Mapping[int, ReadTable], nodes: int) -> RangeData:
    """The hub's view input over the windows given: window sums, presence inferred, as the views read them."""
    start, end = min(merged_by_window), max(merged_by_window) + catalog.window_seconds
    return RangeData.from_tables(catalog, Layout.from_catalog(catalog), start, end, dict(merged_by_window), nodes)


class ViewInput(Protocol):
    """What the combined-table views read: `RangeData`, or a design's own range sum (`Shown`)."""

    catalog: Catalog

    @property
    def combined(self) -> ReadTable: ...


class Shown:
    """A range sum that a design outside the product builds itself, in the shape the views read."""

    def __init__(
        self, catalog: Catalog, combined: Table, windows: Sequence[int], nodes: int, raw: Table | None = None
    ) -> None:
        self.catalog = catalog
        self.combined = combined
        self.raw = combined if raw is None else raw  # every cell's sum, for quantiles
        self.per_window = {w: None for w in windows}
        self.nodes = nodes

    def raw_of(self, metrics: Collection[str]) -> Table:
        """`raw`, only the cells of `metrics`."""
        return {key: cs for key, cs in self.raw.items() if key[0] in metrics}


def render(data: ViewInput, names: Sequence[str]) -> dict[str, Any]:
    """The hub's views (the functions `GET /v1/views/{name}` runs) over a range."""
    return {name: VIEWS[name][1](data) for name in names}  # type: ignore[arg-type]
