"""The node's own published view: the hub's views API over the node's signed snapshots only.

A node's dashboard shows what the node itself published — noised and
thresholded snapshots, never a raw row — with the same insights and the same
API shape as a hub (so the same dashboard serves both).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from node.export import Publisher
from protocol.catalog import Catalog
from protocol.envelope import verify_envelope
from views.columns import Layout
from views.merge import Table, snapshot_table
from views.ranges import RangeData


class SnapshotRanges:
    """A RangeSource over this node's committed snapshots."""

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher
        self._layouts: dict[str, Layout] = {}

    def latest_window(self, catalog: Catalog) -> int | None:
        return max(self._publisher.windows.exported, default=None)

    def load(self, catalog: Catalog, start: int, end: int) -> RangeData:
        per_window: dict[int, Table] = {}
        for window in sorted(w for w in self._publisher.windows.exported if start <= w < end):
            envelope = self._publisher.verified(window)
            if envelope is None:
                continue  # a damaged stored snapshot is shown nowhere
            snapshot = verify_envelope(envelope).snapshot
            if snapshot.catalog == catalog.hash:
                per_window[window] = snapshot_table(snapshot, catalog)
        layout = self._layouts.get(catalog.hash) or self._layouts.setdefault(catalog.hash, Layout.from_catalog(catalog))
        return RangeData.from_tables(catalog, layout, start, end, per_window, 1 if per_window else 0)


def windows_document(publisher: Publisher, catalog: Catalog) -> dict[str, Any]:
    """The node's published windows, in the hub's `/v1/windows` shape."""
    return {
        "catalog": catalog.hash,
        "windows": [
            {
                "window_start": datetime.fromtimestamp(w, UTC).strftime("%Y-%m-%d"),
                "start": w,
                "end": w + publisher.windows.seconds,
                "nodes": 1,
            }
            for w in sorted(publisher.windows.exported)
        ],
    }
