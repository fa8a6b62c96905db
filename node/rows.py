"""Filtered rows: plain tuples per request (`RowBlock`), one Arrow table per commit (`RowLayout`).

The one column layout of the stage files and the store. A request's rows
stay Python tuples until a group of requests is committed: building Arrow arrays costs a few µs per column whatever the row
count, so one table per group, not per request (a 1-event request would
otherwise pay for 15 arrays, and the commit would scan hundreds of chunks).
Rows rather than columns: a one-event request then makes one tuple instead
of 15 one-item lists, and the group's columns come out of one transposition
in C (`zip`) instead of a Python step per request and column.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import chain
from typing import Any

import pyarrow as pa

from node.privacy import FilteredEvent
from protocol.catalog import Catalog

Row = tuple[Any, ...]
"""One filtered row in `RowLayout` order: window, hour (unix seconds), session, app, action, country,
minute, then one label or None per declared attribute."""


def attribute_field(name: str) -> str:
    """Arrow column of a declared attribute (its DuckDB column, unquoted)."""
    return "a_" + name.replace("-", "_")


@dataclass(slots=True)
class RowBlock:
    """One request's filtered rows (`Row` tuples)."""

    rows: list[Row]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def window(self) -> int:
        """The first row's window (unix seconds): every row of a live request has the server clock's."""
        return int(self.rows[0][0])


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

    def block(self, events: Sequence[FilteredEvent]) -> RowBlock:
        """Filtered events -> their columns."""
        # A batch shares a handful of window and hour values: convert each once.
        seconds: dict[datetime, int] = {}

        def unix(moment: datetime) -> int:
            value = seconds.get(moment)
            if value is None:
                value = seconds[moment] = int(moment.timestamp())
            return value

        names = self.attributes
        return RowBlock([
            (unix(e.window), unix(e.hour), e.session, e.app, e.action, e.country, e.minute,
             *[e.attributes.get(name) for name in names])
            for e in events
        ])

    def table(self, blocks: Sequence[RowBlock]) -> pa.Table:
        """Blocks -> one Arrow table of this layout (one chunk per column)."""
        rows = blocks[0].rows if len(blocks) == 1 else list(chain.from_iterable(b.rows for b in blocks))
        columns: Any = zip(*rows, strict=False) if rows else [()] * len(self.schema)
        arrays = [pa.array(values, field.type) for values, field in zip(columns, self.schema, strict=False)]
        return pa.Table.from_arrays(arrays, schema=self.schema)
