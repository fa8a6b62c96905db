"""`liberation node import`: historical events through the same privacy filter, in batches of lines.

Each line of a JSONL file is one event; its own timestamp decides the window (events of a
window already published or closed for export are refused as `window-closed`, not stored).
`import_batch` sends a batch through the node's writer, the live ingest path: a running node
takes it through its admin socket, a stopped one in the command's own process (node/admin.py).
`import_lines` is for code that holds an opened node and no event loop (benchmarks); `import_events`
takes the events already decoded (the demo's synthetic history, made as dicts).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import IO, TYPE_CHECKING

from pydantic import BaseModel, Field, ValidationError

from node.privacy import WINDOW_CLOSED, FilteredEvent
from node.rows import Row, RowBlock
from node.windows import WindowClosed
from protocol import jsontext
from protocol.errors import LiberationError
from protocol.events import MAX_BATCH, Event
from runtime.groupcommit import StorageUnavailable

if TYPE_CHECKING:
    from node.service import Node

CHUNK = 20_000
"""Events filtered, then committed, at a time by `import_lines` and `import_events`."""
BATCH_LINES = 5_000
"""Lines the CLI sends in one `import_batch` (a megabyte or two of JSON)."""
GROUP_EVENTS = MAX_BATCH
"""Events the fast pass takes at a time: a group it is not sure of goes the exact way, so one odd line costs little."""


class ImportSummary(BaseModel):
    """What an import did: lines read, events accepted, rejected by reason, attributes dropped."""

    lines: int = 0
    accepted: int = 0
    dropped_attributes: int = 0
    rejected: dict[str, int] = Field(default_factory=dict)

    def add(self, other: ImportSummary) -> None:
        self.lines += other.lines
        self.accepted += other.accepted
        self.dropped_attributes += other.dropped_attributes
        for reason, count in other.rejected.items():
            self.rejected[reason] = self.rejected.get(reason, 0) + count

    def reject(self, reason: str, count: int = 1) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + count

    def render(self) -> str:
        lines = [
            f"read {self.lines} lines: {self.accepted} events accepted, "
            f"{sum(self.rejected.values())} rejected, {self.dropped_attributes} attributes dropped"
        ]
        for reason, count in Counter(self.rejected).most_common():
            lines.append(f"  rejected {count:>9}  {reason}")
        return "\n".join(lines)


MALFORMED = object()
"""What `decode` gives for a line that is not JSON: the exact path refuses it as `malformed-json`."""


def decode(lines: Iterable[str]) -> Iterator[object]:
    """The events of JSONL lines, decoded (MALFORMED for a line that is not JSON); blank lines skipped."""
    for line in lines:
        if not line.strip():
            continue
        try:
            yield jsontext.loads(line)
        except json.JSONDecodeError:
            yield MALFORMED


def filter_lines(node: Node, lines: Iterable[str], summary: ImportSummary) -> list[RowBlock]:
    """Parse and filter JSONL lines (counting into `summary`); the kept rows, one block per window."""
    return filter_events(node, decode(lines), summary)


def filter_events(node: Node, events: Iterable[object], summary: ImportSummary) -> list[RowBlock]:
    """Filter decoded events (counting into `summary`); the kept rows, one block per window.

    Events go through the fast pass (node/fastfilter.py `run_history`) a group at a
    time; it stores what the exact path would, or gives the whole group to the exact
    path (pydantic `Event`, `PrivacyFilter.apply`), which decides event by event and
    names each refusal. Both decide with the same rules, salts and windows.
    """
    by_window: dict[int, list[Row]] = {}
    now = node.clock()
    group: list[object] = []
    for event in events:
        group.append(event)
        if len(group) == GROUP_EVENTS:
            _filter_group(node, group, now, summary, by_window)
            group = []
    if group:
        _filter_group(node, group, now, summary, by_window)
    return [RowBlock(rows) for rows in by_window.values()]


def _filter_group(
    node: Node, group: list[object], now: datetime, summary: ImportSummary, by_window: dict[int, list[Row]]
) -> None:
    """One group of events into `by_window`: the fast pass if it is sure of every event, else the exact one."""
    summary.lines += len(group)
    fast = node.ingestor.fast.run_history(group, now=now, salt_for=node.windows.salt_for)
    block, dropped = fast if fast is not None else _filter_exact(node, group, now, summary)
    summary.dropped_attributes += dropped
    for row in block.rows:
        rows = by_window.get(row[0])
        if rows is None:
            rows = by_window[row[0]] = []
        rows.append(row)


def _filter_exact(node: Node, group: list[object], now: datetime, summary: ImportSummary) -> tuple[RowBlock, int]:
    """The exact path, event by event: the kept rows and attributes dropped; refusals counted in `summary`."""
    kept: list[FilteredEvent] = []
    dropped = 0
    privacy, salt_for = node.ingestor.privacy, node.windows.salt_for
    for item in group:
        if item is MALFORMED:
            summary.reject("malformed-json")
            continue
        try:
            event = Event.model_validate(item)
        except ValidationError as exc:
            first = exc.errors(include_input=False)[0]
            summary.reject(f"invalid-{first['loc'][0] if first['loc'] else 'event'}")
            continue
        result = privacy.apply(event, now=now, salt_for=salt_for, live=False)
        if result.event is None:
            assert result.rejection is not None
            summary.reject(result.rejection.reason)
            continue
        kept.append(result.event)
        dropped += result.dropped_attributes
    return node.ingestor.layout.block(kept), dropped


async def import_batch(node: Node, lines: list[str]) -> ImportSummary:
    """Filter a batch of lines (in a worker thread) and commit what passes through the node's writer."""
    summary = ImportSummary()
    blocks = await asyncio.to_thread(filter_lines, node, lines, summary)
    for block in blocks:
        try:
            await node.writer.submit(block)
        except WindowClosed:
            summary.reject(WINDOW_CLOSED.reason, len(block))
            continue
        except StorageUnavailable as exc:
            raise LiberationError(f"the node could not store the events ({exc}): nothing of this batch after "
                                  f"line {summary.lines - len(lines)} was stored") from None
        summary.accepted += len(block)
    return summary


def import_lines(
    node: Node,
    lines: Iterable[str],
    *,
    progress: Callable[[ImportSummary], None] | None = None,
) -> ImportSummary:
    """Filter and commit events from JSONL lines on a node opened here, without its writer task; the summary."""
    return import_events(node, decode(lines), progress=progress)


def import_events(
    node: Node,
    events: Iterable[object],
    *,
    progress: Callable[[ImportSummary], None] | None = None,
) -> ImportSummary:
    """`import_lines` of events already decoded (what a line's JSON holds, as the demo makes them); the summary."""
    summary = ImportSummary()
    chunk: list[object] = []

    def flush() -> None:
        blocks = filter_events(node, chunk, summary)
        closed = node.windows.commit(blocks)
        summary.accepted += sum(len(block) for block in blocks) - closed
        if closed:
            summary.reject(WINDOW_CLOSED.reason, closed)
        chunk.clear()
        if progress is not None:
            progress(summary)

    for event in events:
        chunk.append(event)
        if len(chunk) >= CHUNK:
            flush()
    if chunk:
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
