"""Filtered rows: plain column lists per request (`RowBlock`), one Arrow table per commit (`RowLayout`).

The one column layout shared by the store and the ingest workers' handoff.
A request's rows stay Python lists until a group of requests is sent or
committed: building Arrow arrays costs a few µs per column whatever the row
count, so one table per group, not per request (a 1-event request would
otherwise pay for 17 arrays, and the commit would scan hundreds of chunks).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import chain
from typing import Any, TypeVar

import pyarrow as pa

from node.privacy import FilteredEvent
from protocol.catalog import Catalog

T = TypeVar("T")


def attribute_field(name: str) -> str:
    """Arrow column of a declared attribute (its DuckDB column, unquoted)."""
    return "a_" + name.replace("-", "_")


@dataclass(slots=True)
class RowBlock:
    """Filtered rows as column lists, in `RowLayout` order; `attributes` holds one list per declared attribute."""

    window: list[int]  # unix seconds
    hour: list[int]  # unix seconds
    session: list[int]
    app: list[str]
    action: list[str]
    country: list[str]
    minute: list[int]
    attributes: list[list[str | None]]

    def __len__(self) -> int:
        return len(self.session)


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

        return RowBlock(
            window=[unix(e.window) for e in events],
            hour=[unix(e.hour) for e in events],
            session=[e.session for e in events],
            app=[e.app for e in events],
            action=[e.action for e in events],
            country=[e.country for e in events],
            minute=[e.minute for e in events],
            attributes=[[e.attributes.get(name) for e in events] for name in self.attributes],
        )

    def table(self, blocks: Sequence[RowBlock]) -> pa.Table:
        """Blocks -> one Arrow table of this layout (one chunk per column)."""
        columns: list[list[Any]] = [
            _joined(b.window for b in blocks),
            _joined(b.hour for b in blocks),
            _joined(b.session for b in blocks),
            _joined(b.app for b in blocks),
            _joined(b.action for b in blocks),
            _joined(b.country for b in blocks),
            _joined(b.minute for b in blocks),
        ] + [_joined(b.attributes[i] for b in blocks) for i in range(len(self.attributes))]
        arrays = [pa.array(values, field.type) for values, field in zip(columns, self.schema)]
        return pa.Table.from_arrays(arrays, schema=self.schema)


def _joined(parts: Iterable[list[T]]) -> list[T]:
    return list(chain.from_iterable(parts))
