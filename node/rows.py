"""Filtered events as Arrow: the one column layout shared by the store and the ingest workers' handoff."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import pyarrow as pa

from node.privacy import FilteredEvent
from protocol.catalog import Catalog


def attribute_field(name: str) -> str:
    """Arrow column of a declared attribute (its DuckDB column, unquoted)."""
    return "a_" + name.replace("-", "_")


class RowLayout:
    """The Arrow schema of filtered rows of one catalog, before the store numbers them (no seq)."""

    def __init__(self, catalog: Catalog) -> None:
        self.attributes = tuple(catalog.attributes)
        self.schema = pa.schema(
            [
                ("window_start", pa.int64()),
                ("hour", pa.int64()),
                ("session", pa.int64()),
                ("app", pa.string()),
                ("action", pa.string()),
                ("country", pa.string()),
                ("minute", pa.int16()),
            ]
            + [(attribute_field(name), pa.string()) for name in self.attributes]
        )

    def table(self, events: Sequence[FilteredEvent]) -> pa.Table:
        """Filtered events -> an Arrow table of this layout."""
        # A batch shares a handful of window and hour values: convert each once.
        seconds: dict[datetime, int] = {}

        def unix(moment: datetime) -> int:
            value = seconds.get(moment)
            if value is None:
                value = seconds[moment] = int(moment.timestamp())
            return value

        columns: list[pa.Array] = [
            pa.array([unix(e.window) for e in events], pa.int64()),
            pa.array([unix(e.hour) for e in events], pa.int64()),
            pa.array([e.session for e in events], pa.int64()),
            pa.array([e.app for e in events], pa.string()),
            pa.array([e.action for e in events], pa.string()),
            pa.array([e.country for e in events], pa.string()),
            pa.array([e.minute for e in events], pa.int16()),
        ]
        for name in self.attributes:
            columns.append(pa.array([e.attributes.get(name) for e in events], pa.string()))
        return pa.Table.from_arrays(columns, schema=self.schema)
