"""The hub's merge: noisy cells summed over nodes and windows, presence inferred, insights derived.

Everything here is post-processing of published values (noised, signed by
their nodes): no function sees a raw event or a true count, so none
spends privacy budget. Pure: no I/O.
The insights built on these sums are in views/insights.py.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from protocol.catalog import Catalog
from protocol.snapshot import FORMAT, MetricCells, Snapshot
from views.significance import presence_threshold

Kind = Literal["cell", "other"]
CellKey = tuple[str, Kind, int]
"""(metric name, kind, index): a cell index for "cell", a prefix index for "other"."""


@dataclass(frozen=True, slots=True)
class CellSum:
    """A sum of noisy values of one cell."""

    value: int
    """Sum of the noisy values."""
    variance: float
    """Sum of the noise variances of the summed values."""
    nodes: int
    """Node snapshots that contributed (summed within a window, max over windows)."""


Table = dict[CellKey, CellSum]
ReadTable = Mapping[CellKey, CellSum]


# ---- merge -------------------------------------------------------------------


def snapshot_table(snapshot: Snapshot, catalog: Catalog | None = None) -> Table:
    """One snapshot's published cells, each with the snapshot's per-value variance.

    An `other` value is the sum of the m suppressed cells of its prefix, each
    noised independently, so its variance is m times the per-value variance; m
    is the size of the last dimension minus the prefix's published cells and
    needs the catalog. Without it (or for a metric it lacks) m is taken as 1,
    which understates the sd of `other` values: pass the catalog.
    """
    table: Table = {}
    for name, cells in snapshot.metrics.items():
        for index, value in zip(cells.idx, cells.val, strict=False):
            table[(name, "cell", index)] = CellSum(value, cells.variance, snapshot.nodes)
        last = _last_dim(catalog, name)
        published = Counter(index // last for index in cells.idx) if last else Counter[int]()
        for prefix, value in zip(cells.other_idx, cells.other_val, strict=False):
            folded = max(1, last - published[prefix]) if last else 1
            table[(name, "other", prefix)] = CellSum(value, cells.variance * folded, snapshot.nodes)
    return table


CELL_SCHEMA = pa.schema(
    [("catalog", pa.string()), ("window_start", pa.int64()), ("metric", pa.string()), ("kind", pa.string()),
     ("idx", pa.int64()), ("value", pa.int64()), ("variance", pa.float64()), ("nodes", pa.int64()),
     ("epsilon", pa.float64())]
)


def snapshot_rows(snapshot: Snapshot, catalog: Catalog) -> pa.Table:
    """A snapshot's cells as rows of the merged table (one per published cell), with the epsilon
    its metric spent (for the archive).

    The rows of `snapshot_table`, built column by column. Intake runs this for every
    snapshot, and all columns but `value` are the same for every snapshot of a window with
    the same cells published (every node's, with threshold 0): those come from a small
    cache, so a snapshot costs one array of its values.
    """
    runs = tuple(
        (name, cells.idx, cells.other_idx, cells.variance, math.copysign(1.0, cells.variance), cells.epsilon,
         # An `other` sums its prefix's suppressed cells: its variance needs the last dimension's size.
         catalog.shape(catalog.metric(name))[-1] if cells.other_idx else 0)
        for name, cells in snapshot.metrics.items()
    )
    fixed = _fixed_columns(snapshot.catalog, snapshot.window_start, snapshot.nodes, runs)
    values = [run for cells in snapshot.metrics.values() for run in (cells.val, cells.other_val)]
    value = pa.array(np.fromiter(chain.from_iterable(values), dtype=np.int64, count=len(fixed[0])))
    return pa.Table.from_arrays([*fixed[:5], value, *fixed[5:]], schema=CELL_SCHEMA)


_Run = tuple[str, tuple[int, ...], tuple[int, ...], float, float, float, int]
"""A metric's part of `snapshot_rows`' cache key: name, idx, other_idx, variance (and its sign), epsilon, last dimension."""


@lru_cache(maxsize=64)
def _fixed_columns(catalog: str, window_start: int, nodes: int, runs: tuple[_Run, ...]) -> tuple[pa.Array, ...]:
    """Every column of `snapshot_rows` but `value`, for these metrics' published cells.

    Keyed by everything they are made of (a variance's sign too: -0.0 == 0.0), so a hit is
    exactly what building them again would give. Arrow arrays are immutable: tables share them.
    """
    metrics: list[str] = []
    kinds: list[str] = []
    indices: list[int] = []
    variances: list[float] = []
    epsilons: list[float] = []
    for name, idx, other_idx, variance, _, epsilon, last in runs:
        metrics += [name] * (len(idx) + len(other_idx))
        epsilons += [epsilon] * (len(idx) + len(other_idx))
        kinds += ["cell"] * len(idx) + ["other"] * len(other_idx)
        indices += idx
        indices += other_idx
        variances += [variance] * len(idx)
        if other_idx:
            # An `other` sums the prefix's suppressed cells, each noised: m times the variance (snapshot_table).
            published = Counter(index // last for index in idx)
            variances += [variance * max(1, last - published[prefix]) for prefix in other_idx]
    n = len(indices)
    return (
        pa.array([catalog] * n, pa.string()),
        pa.array([window_start] * n, pa.int64()),
        pa.array(metrics, pa.string()),
        pa.array(kinds, pa.string()),
        pa.array(indices, pa.int64()),
        pa.array(variances, pa.float64()),
        pa.array([nodes] * n, pa.int64()),
        pa.array(epsilons, pa.float64()),
    )


def add_tables(a: ReadTable, b: ReadTable) -> Table:
    """Two node tables of one window, summed per key (value, variance and nodes add)."""
    return merge_tables((a, b))


def merge_tables(tables: Iterable[ReadTable]) -> Table:
    """Node tables of one window, summed per key (value, variance and nodes add)."""
    return _accumulate(tables, nodes_add=True)


def combine_windows(tables: Iterable[ReadTable]) -> Table:
    """Merged tables of several windows, summed per key; nodes is the max over windows.

    The same node appears in many windows, so adding node counts would
    overstate how many distinct nodes a sum rests on.
    """
    return _accumulate(tables, nodes_add=False)


def apply_presence(catalog: Catalog, table: ReadTable) -> Table:
    """Fold every cell not shown as present (views/significance.py) into its prefix's `other`.

    Post-processing: it reads only noisy published values, so it costs no
    privacy budget. A cell is present when its merged sum clears the
    false-discovery bound over every snapshot in it and k_min (the seed's rule:
    no number below it). Folding rather than dropping keeps every total
    unbiased: the rest is there, as mass that cannot be told apart from noise
    cell by cell; an `other` is never dropped. The dict form is the test oracle
    of `columns.apply_presence`. Every metric of the table must be in the catalog.
    """
    specs = {metric.name: metric for metric in catalog.metrics}
    last = {metric.name: catalog.shape(metric)[-1] for metric in catalog.metrics}
    out: Table = {}
    folded: Table = {}
    for key, cs in table.items():
        name, kind, index = key
        if kind == "cell" and cs.value < presence_threshold(catalog, specs[name], cs.variance):
            other: CellKey = (name, "other", index // last[name])
            folded[other] = fold_sums(folded.get(other), cs)
        else:
            out[key] = cs
    for key, cs in folded.items():
        out[key] = fold_sums(out.get(key), cs)
    return out


def sd(cs: CellSum) -> float:
    """Standard deviation of a sum's noise."""
    return math.sqrt(cs.variance)


def _share(variance: float, m: int) -> float:
    """variance / m, rounded up so that m times it is never below `variance` (the bound a parent relies on)."""
    share = variance / m
    while share * m < variance:  # the division rounded down (or underflowed): one ulp up, once or twice
        share = math.nextafter(share, math.inf)
    return share


def to_snapshot(
    catalog: Catalog,
    table: ReadTable,
    *,
    node: str,
    window_start: int,
    window_end: int,
    seq: int,
    created: int,
    nodes: int,
    epsilon: Mapping[str, float],
    scale: Mapping[str, float],
) -> Snapshot:
    """A merged table as a snapshot body a parent hub can verify and merge (hub of hubs).

    Publish the merged table as it is (every cell: the parent infers presence
    over its own sums). The wire has one
    `variance` per metric, read as each cell's variance and, for an `other`,
    as that times its m (see `snapshot_table`). A parent needs an sd it can
    trust, so this writes the largest per-value variance of the metric: the
    cells' own and each other's variance divided by its m. Every value then
    gets a variance at least its true one, exactly so when all cells rest on
    the same nodes. `epsilon` and `scale` per metric are the caller's (nodes
    hold disjoint data, so a window's epsilon is the largest of its nodes').
    """
    by_metric: dict[str, dict[Kind, list[tuple[int, CellSum]]]] = defaultdict(lambda: {"cell": [], "other": []})
    for (name, kind, index), cs in table.items():
        by_metric[name][kind].append((index, cs))
    unknown = set(by_metric) - {metric.name for metric in catalog.metrics}
    if unknown:
        raise ValueError(f"metrics not in the catalog: {sorted(unknown)}")
    metrics: dict[str, MetricCells] = {}
    for metric in catalog.metrics:
        cells = sorted(by_metric[metric.name]["cell"], key=lambda item: item[0])
        others = sorted(by_metric[metric.name]["other"], key=lambda item: item[0])
        if (cells and cells[-1][0] >= catalog.domain_size(metric)) or (
            others and others[-1][0] >= catalog.prefix_size(metric)
        ):
            raise ValueError(f"metric {metric.name!r}: an index is outside its domain")
        last = catalog.shape(metric)[-1]
        published = Counter(index // last for index, _ in cells)
        per_value = [cs.variance for _, cs in cells]
        per_value += [_share(cs.variance, max(1, last - published[prefix])) for prefix, cs in others]
        metrics[metric.name] = MetricCells(
            epsilon=float(epsilon[metric.name]),
            scale=float(scale[metric.name]),
            variance=float(max(per_value, default=0.0)),
            threshold=0,
            idx=tuple(index for index, _ in cells),
            val=tuple(int(cs.value) for _, cs in cells),
            other_idx=tuple(prefix for prefix, _ in others),
            other_val=tuple(int(cs.value) for _, cs in others),
        )
    return Snapshot(
        format=FORMAT, node=node, catalog=catalog.hash, window_start=window_start, window_end=window_end,
        seq=seq, created=created, nodes=nodes, metrics=metrics,
    )


def _accumulate(tables: Iterable[ReadTable], *, nodes_add: bool) -> Table:
    sums: dict[CellKey, list[Any]] = {}
    for table in tables:
        for key, cs in table.items():
            acc = sums.get(key)
            if acc is None:
                sums[key] = [cs.value, cs.variance, cs.nodes]
            else:
                acc[0] += cs.value
                acc[1] += cs.variance
                acc[2] = acc[2] + cs.nodes if nodes_add else max(acc[2], cs.nodes)
    return {key: CellSum(int(v), float(var), int(n)) for key, (v, var, n) in sums.items()}


def fold_sums(a: CellSum | None, b: CellSum | None) -> CellSum:
    # Sums across different cells: values and variances add, nodes is the max
    # (the parts' node sets overlap, so adding would overcount).
    if a is None or b is None:
        result = a or b
        assert result is not None
        return result
    return CellSum(a.value + b.value, a.variance + b.variance, max(a.nodes, b.nodes))


def total_sums(parts: Iterable[CellSum | None]) -> CellSum | None:
    result: CellSum | None = None
    for part in parts:
        if part is not None:
            result = fold_sums(result, part)
    return result


def _last_dim(catalog: Catalog | None, name: str) -> int:
    if catalog is None:
        return 0
    try:
        return catalog.shape(catalog.metric(name))[-1]
    except KeyError:
        return 0
