"""`liberation node import`: bulk import of historical events through the same privacy filter.

Each line of a JSONL file is one event; its own timestamp decides the window
(events for windows already closed are counted as late, not stored). Events
are committed in chunks, straight into the node's store: run it while the
node's server is stopped (DuckDB allows one writing process).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO

from pydantic import ValidationError

from node.app import Node
from node.privacy import WINDOW_CLOSED, FilteredEvent
from protocol import jsontext
from protocol.events import Event

CHUNK = 20_000


@dataclass
class ImportSummary:
    """What an import did: lines read, events accepted, rejected by reason, attributes dropped."""

    lines: int = 0
    accepted: int = 0
    dropped_attributes: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    def render(self) -> str:
        lines = [
            f"read {self.lines} lines: {self.accepted} events accepted, "
            f"{sum(self.rejected.values())} rejected, {self.dropped_attributes} attributes dropped"
        ]
        for reason, count in self.rejected.most_common():
            lines.append(f"  rejected {count:>9}  {reason}")
        return "\n".join(lines)


def import_lines(
    node: Node,
    lines: Iterable[str],
    *,
    progress: Callable[[ImportSummary], None] | None = None,
) -> ImportSummary:
    """Filter and commit events from JSONL lines; returns the summary."""
    summary = ImportSummary()
    pending: list[FilteredEvent] = []
    now = node.clock()

    def flush() -> None:
        by_window: dict[object, list[FilteredEvent]] = {}
        for event in pending:
            by_window.setdefault(event.window, []).append(event)
        closed = node.windows.commit([node.ingestor.layout.block(events) for events in by_window.values()])
        summary.accepted += len(pending) - closed
        if closed:
            summary.rejected[WINDOW_CLOSED.reason] += closed
        pending.clear()
        if progress is not None:
            progress(summary)

    for line in lines:
        if not line.strip():
            continue
        summary.lines += 1
        try:
            event = Event.model_validate(jsontext.loads(line))
        except json.JSONDecodeError:
            summary.rejected["malformed-json"] += 1
            continue
        except ValidationError as exc:
            first = exc.errors(include_input=False)[0]
            summary.rejected[f"invalid-{first['loc'][0] if first['loc'] else 'event'}"] += 1
            continue
        result = node.ingestor.privacy.apply(event, now=now, salt_for=node.windows.salt_for, live=False)
        if result.event is None:
            assert result.rejection is not None
            summary.rejected[result.rejection.reason] += 1
            continue
        pending.append(result.event)
        summary.dropped_attributes += result.dropped_attributes
        if len(pending) >= CHUNK:
            flush()
    if pending:
        flush()
    # Leave no event's minute behind: only each session's first/last minute is kept.
    node.store.fold_sessions()
    return summary


def progress_bar(stream: IO[str]) -> Callable[[ImportSummary], None]:
    """A one-line progress display on a terminal (carriage return, no scrolling)."""

    def show(summary: ImportSummary) -> None:
        rejected = sum(summary.rejected.values())
        stream.write(f"\rimported {summary.accepted:>10,} events  rejected {rejected:>8,}")
        stream.flush()

    return show
