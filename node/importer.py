"""`liberation node import`: historical events through the same privacy filter, in batches of lines.

Each line of a JSONL file is one event; its own timestamp decides the window (events of a
window already published or closed for export are refused as `window-closed`, not stored).
`import_batch` sends a batch through the node's writer, the live ingest path: a running node
takes it through its admin socket, a stopped one in the command's own process (node/admin.py).
`import_lines` is for code that holds an opened node and no event loop (the demo, benchmarks).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Iterable
from typing import IO, TYPE_CHECKING

from pydantic import BaseModel, Field, ValidationError

from node.privacy import WINDOW_CLOSED, FilteredEvent
from node.rows import RowBlock
from node.windows import WindowClosed
from protocol import jsontext
from protocol.errors import LiberationError
from protocol.events import Event
from runtime.groupcommit import StorageUnavailable

if TYPE_CHECKING:
    from node.service import Node

CHUNK = 20_000
"""Lines filtered, then committed, at a time by `import_lines`."""
BATCH_LINES = 5_000
"""Lines the CLI sends in one `import_batch` (a megabyte or two of JSON)."""


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


def filter_lines(node: Node, lines: Iterable[str], summary: ImportSummary) -> list[RowBlock]:
    """Parse and filter JSONL lines (counting into `summary`); the kept rows, one block per window."""
    by_window: dict[object, list[FilteredEvent]] = {}
    now = node.clock()
    for line in lines:
        if not line.strip():
            continue
        summary.lines += 1
        try:
            event = Event.model_validate(jsontext.loads(line))
        except json.JSONDecodeError:
            summary.reject("malformed-json")
            continue
        except ValidationError as exc:
            first = exc.errors(include_input=False)[0]
            summary.reject(f"invalid-{first['loc'][0] if first['loc'] else 'event'}")
            continue
        result = node.ingestor.privacy.apply(event, now=now, salt_for=node.windows.salt_for, live=False)
        if result.event is None:
            assert result.rejection is not None
            summary.reject(result.rejection.reason)
            continue
        by_window.setdefault(result.event.window, []).append(result.event)
        summary.dropped_attributes += result.dropped_attributes
    return [node.ingestor.layout.block(events) for events in by_window.values()]


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
    summary = ImportSummary()
    chunk: list[str] = []

    def flush() -> None:
        blocks = filter_lines(node, chunk, summary)
        closed = node.windows.commit(blocks)
        summary.accepted += sum(len(block) for block in blocks) - closed
        if closed:
            summary.reject(WINDOW_CLOSED.reason, closed)
        chunk.clear()
        if progress is not None:
            progress(summary)

    for line in lines:
        chunk.append(line)
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
