"""Merged tables as columns over a catalog's cell layout: window sums, presence folding, and reads by key.

A catalog fixes every key a merged table can hold (per metric: its cells, then
its `other` prefixes), so a table is a few arrays over that layout rather than a
dict of `CellSum`s. The functions here give the same numbers as
`merge.combine_windows` and `merge.apply_presence` on the equivalent dicts, bit for
bit: floats are added in the order those functions add them, which follows the
dicts' key order; `Cells.order` records it. `CellTable` is how the insights read
columns: as the equivalent dict, without building one.
"""

from __future__ import annotations

from collections.abc import Collection, ItemsView, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import numpy as np
import numpy.typing as npt

from protocol.catalog import Catalog
from views import significance
from views.merge import CellKey, CellSum, ReadTable

Array = npt.NDArray[Any]
INT64_SAFE = 2**62
"""Below this bound on the summed |values|, int64 arithmetic is exact; beyond it, Python ints."""
_T = TypeVar("_T")


@dataclass(frozen=True)
class Layout:
    """Every key a table of one catalog can hold, in order: per metric (catalog order) its cells, then its others."""

    keys: tuple[CellKey, ...]
    position: dict[CellKey, int]
    offset: dict[tuple[str, str], tuple[int, int]]  # (metric, kind) -> (first position, count)
    is_cell: Array  # bool per position
    other_of: Array  # per cell position: the position of its prefix's `other`; -1 for an other

    @classmethod
    def from_catalog(cls, catalog: Catalog) -> Layout:
        keys: list[CellKey] = []
        offset: dict[tuple[str, str], tuple[int, int]] = {}
        other_of: list[int] = []
        for metric in catalog.metrics:
            cells, prefixes, last = catalog.domain_size(metric), catalog.prefix_size(metric), catalog.shape(metric)[-1]
            offset[(metric.name, "cell")] = (len(keys), cells)
            first_other = len(keys) + cells
            offset[(metric.name, "other")] = (first_other, prefixes)
            keys += [(metric.name, "cell", i) for i in range(cells)]
            other_of += [first_other + i // last for i in range(cells)]
            keys += [(metric.name, "other", i) for i in range(prefixes)]
            other_of += [-1] * prefixes
        other = np.array(other_of, dtype=np.int64)
        return cls(tuple(keys), {key: i for i, key in enumerate(keys)}, offset, other >= 0, other)

    def __len__(self) -> int:
        return len(self.keys)

    def span(self, metric: str) -> tuple[int, int] | None:
        """[first, end) of a metric's positions (its cells, then its others); None if the catalog lacks it."""
        cells, others = self.offset.get((metric, "cell")), self.offset.get((metric, "other"))
        if cells is None or others is None:
            return None
        return cells[0], others[0] + others[1]

    def mask(self, metrics: Collection[str]) -> Array:
        """Per position, whether it is a key of one of `metrics`."""
        wanted = np.zeros(len(self), dtype=bool)
        for metric in metrics:
            span = self.span(metric)
            if span is not None:
                wanted[span[0] : span[1]] = True
        return wanted

    def positions(self, metrics: Sequence[str], kinds: Sequence[str], indices: Sequence[int]) -> Array:
        """The positions of keys given as columns; ValueError for a key outside the catalog."""
        out = np.empty(len(indices), dtype=np.int64)
        for i, (metric, kind, index) in enumerate(zip(metrics, kinds, indices, strict=False)):
            first, count = self.offset.get((metric, kind), (0, 0))
            if not 0 <= index < count:
                raise ValueError(f"cell {(metric, kind, index)} is not in the catalog")
            out[i] = first + index
        return out


@dataclass(frozen=True)
class Cells:
    """One table as columns over a layout: absent keys hold zeros."""

    value: Array  # int64, or Python ints (object) for sums an int64 could not hold
    variance: Array  # float64
    nodes: Array  # int64
    present: Array  # bool
    order: Array  # the present positions, in the key order of the equivalent dict

    @classmethod
    def from_positions(cls, size: int, positions: Array, value: Array, variance: Array, nodes: Array) -> Cells:
        """A table from parallel columns (each key once), in the order given."""
        values: Array = np.zeros(size, dtype=object if value.dtype == object else np.int64)
        variances, counts, present = np.zeros(size, dtype=np.float64), np.zeros(size, dtype=np.int64), np.zeros(size, dtype=bool)
        values[positions] = value
        variances[positions] = variance
        counts[positions] = nodes
        present[positions] = True
        return cls(values, variances, counts, present, np.asarray(positions, dtype=np.int64))

    @classmethod
    def from_table(cls, layout: Layout, table: ReadTable) -> Cells:
        """A dict table as columns, keeping its key order; ValueError for a key outside the catalog."""
        keys = list(table)
        positions = layout.positions([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys])
        sums = list(table.values())
        values = [cs.value for cs in sums]
        wide = any(abs(v) >= INT64_SAFE for v in values)
        return cls.from_positions(
            len(layout), positions, np.array(values, dtype=object if wide else np.int64),
            np.array([cs.variance for cs in sums], dtype=np.float64), np.array([cs.nodes for cs in sums], dtype=np.int64),
        )


class CellTable(Mapping[CellKey, CellSum]):
    """`Cells` read as their equivalent dict table (`merge.Table`): the same keys, order, sums and types.

    What the insights read. Nothing is copied into a dict: `get` reads a position of the
    columns, `metric_items` one metric's slice of the order. With `metrics`, only their
    keys are in the table (a view that reads a few, over cells folded for those alone).
    """

    __slots__ = ("_layout", "_cells", "_order", "_wanted", "_lists")

    def __init__(self, layout: Layout, cells: Cells, metrics: Collection[str] | None = None) -> None:
        self._layout, self._cells, self._order = layout, cells, cells.order
        self._wanted = None if metrics is None else layout.mask(metrics)
        if self._wanted is not None:
            self._order = self._order[self._wanted[self._order]]
        self._lists: tuple[list[Any], list[float], list[int], list[bool]] | None = None

    def _columns(self) -> tuple[list[Any], list[float], list[int], list[bool]]:
        """The columns as Python lists, made on the first read by key: a lookup is then a list index."""
        if self._lists is None:
            cells = self._cells
            held = cells.present if self._wanted is None else cells.present & self._wanted
            self._lists = (cells.value.tolist(), cells.variance.tolist(), cells.nodes.tolist(), held.tolist())
        return self._lists

    @overload
    def get(self, key: CellKey, /) -> CellSum | None: ...
    @overload
    def get(self, key: CellKey, /, default: CellSum | _T) -> CellSum | _T: ...
    def get(self, key: CellKey, /, default: object = None) -> object:
        i = self._layout.position.get(key)
        if i is None:
            return default
        value, variance, nodes, held = self._columns()
        return CellSum(value[i], variance[i], nodes[i]) if held[i] else default

    def __getitem__(self, key: CellKey) -> CellSum:
        found = self.get(key)
        if found is None:
            raise KeyError(key)
        return found

    def __contains__(self, key: object) -> bool:
        i = self._layout.position.get(key)  # type: ignore[call-overload]
        return i is not None and self._columns()[3][i]

    def __iter__(self) -> Iterator[CellKey]:
        keys = self._layout.keys
        return (keys[i] for i in self._order.tolist())

    def __len__(self) -> int:
        return len(self._order)

    def items(self) -> ItemsView[CellKey, CellSum]:
        return _Items(self)

    def metric_items(self, metric: str) -> list[tuple[CellKey, CellSum]]:
        """One metric's keys and sums, in the table's order."""
        span = self._layout.span(metric)
        if span is None:
            return []
        order = self._order
        return self._pairs(order[(order >= span[0]) & (order < span[1])])

    def _pairs(self, positions: Array) -> list[tuple[CellKey, CellSum]]:
        keys, cells = self._layout.keys, self._cells
        return [
            (keys[i], CellSum(v, var, n))
            for i, v, var, n in zip(
                positions.tolist(),
                cells.value[positions].tolist(),
                cells.variance[positions].tolist(),
                cells.nodes[positions].tolist(),
                strict=True,
            )
        ]


class _Items(ItemsView[CellKey, CellSum]):
    """`CellTable.items()`: the pairs made from slices of the columns, not by a lookup per key."""

    def __init__(self, table: CellTable) -> None:
        super().__init__(table)
        self._table = table

    def __iter__(self) -> Iterator[tuple[CellKey, CellSum]]:
        return iter(self._table._pairs(self._table._order))


def metric_items(table: ReadTable, metric: str) -> list[tuple[CellKey, CellSum]]:
    """One metric's keys and sums in the table's order: a slice of a `CellTable`, a scan of a dict (test oracles)."""
    if isinstance(table, CellTable):
        return table.metric_items(metric)
    return [(key, cs) for key, cs in table.items() if key[0] == metric]


def sum_windows(layout: Layout, parts: Sequence[Cells]) -> Cells:
    """`merge.combine_windows` over columns: values and variances add in window order, nodes is the max."""
    size = len(layout)
    if not parts:
        return Cells.from_positions(size, np.empty(0, dtype=np.int64), np.empty(0), np.empty(0), np.empty(0))
    bound = sum(int(np.abs(p.value).max(initial=0)) for p in parts)
    value: Array = np.zeros(size, dtype=object if bound >= INT64_SAFE else np.int64)
    variance = np.zeros(size, dtype=np.float64)
    nodes = np.zeros(size, dtype=np.int64)
    present = np.zeros(size, dtype=bool)
    first = np.full(size, len(parts), dtype=np.int64)  # the first part holding each key
    for i, part in enumerate(parts):
        value = value + part.value
        # An absent key holds 0.0, and x + 0.0 == x: the sum runs over the present values in order.
        variance += part.variance
        np.maximum(nodes, part.nodes, out=nodes)
        first[part.order[~present[part.order]]] = i
        present |= part.present
    # combine_windows' dict order: the first part's keys in its order, then each later part's new keys in its.
    rank = np.zeros(size, dtype=np.int64)
    for i, part in enumerate(parts):
        mine = first[part.order] == i
        rank[part.order[mine]] = np.flatnonzero(mine)
    held = np.flatnonzero(present)
    order = held[np.lexsort((rank[held], first[held]))] if len(parts) > 1 else parts[0].order
    return Cells(value, variance, nodes, present, order)


def presence_thresholds(
    layout: Layout,
    catalog: Catalog,
    cells: Cells,
    scales: Mapping[str, float] | None = None,
    metrics: Collection[str] | None = None,
) -> Array:
    """Per position, the least value a present cell needs (`significance.presence_threshold`); 0 for others.

    `scales`: the noise scale of each metric's draws when not the community snapshots' (a round's keepers').
    With `metrics`, only their cells get a bound (a caller that reads those alone).
    """
    out = np.zeros(len(layout), dtype=np.int64)
    for metric in catalog.metrics:
        if metrics is not None and metric.name not in metrics:
            continue
        first, count = layout.offset[(metric.name, "cell")]
        variances = cells.variance[first : first + count]
        scale = scales.get(metric.name) if scales is not None else None
        # One merged variance per number of draws: a handful of distinct values per metric.
        distinct, inverse = np.unique(variances, return_inverse=True)
        thresholds = np.array(significance.presence_thresholds(catalog, metric, distinct.tolist(), scale), dtype=np.int64)
        out[first : first + count] = thresholds[inverse]
    return out


def apply_presence(
    layout: Layout,
    cells: Cells,
    catalog: Catalog,
    scales: Mapping[str, float] | None = None,
    metrics: Collection[str] | None = None,
) -> Cells:
    """`merge.apply_presence` over columns: cells not present folded into their prefix's other; others kept.

    `scales`: as for `presence_thresholds`. With `metrics`, only their cells are folded: the others
    are left as summed (read them not).
    """
    order = cells.order
    bounds = presence_thresholds(layout, catalog, cells, scales, metrics)
    low_mask = cells.present & layout.is_cell & (cells.value < bounds).astype(bool)
    low = order[low_mask[order]]  # in the table's order: folds add in that order
    targets = layout.other_of[low]
    size = len(layout)
    folded_value: Array = np.zeros(size, dtype=cells.value.dtype)
    folded_variance = np.zeros(size, dtype=np.float64)
    folded_nodes = np.zeros(size, dtype=np.int64)
    np.add.at(folded_value, targets, cells.value[low])
    np.add.at(folded_variance, targets, cells.variance[low])
    np.maximum.at(folded_nodes, targets, cells.nodes[low])
    folded = np.zeros(size, dtype=bool)
    folded[targets] = True
    value = np.where(folded, cells.value + folded_value, cells.value)
    variance = np.where(folded, cells.variance + folded_variance, cells.variance)
    nodes = np.maximum(cells.nodes, folded_nodes)
    keep = (cells.present & ~low_mask) | folded
    value, variance, nodes = np.where(keep, value, 0), np.where(keep, variance, 0.0), np.where(keep, nodes, 0)
    # Order: the surviving keys in the table's order, then others new to it in the order they were first folded into.
    _, first_fold = np.unique(targets, return_index=True)
    new = targets[np.sort(first_fold)]
    new = new[~cells.present[new]]
    return Cells(value, variance, nodes, keep, np.concatenate([order[keep[order]], new[keep[new]]]))
