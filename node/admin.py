"""The node operator's commands, each one function: run by the node's admin socket, or by the CLI on the node's files.

`NODE_OPERATIONS` is what the socket serves (node/app.py); `node.service.offline_node` opens a stopped
node for the CLI (runtime/admin.py picks the way). Results are data; `render` gives the CLI's lines.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp
from pydantic import BaseModel

from node.importer import ImportSummary, import_batch
from node.outbox import PushAttempt
from protocol.windows import parse_window
from runtime.admin import Blob, Operation, Refused

if TYPE_CHECKING:
    from node.service import Node  # which serves these operations on its socket


def _day(ts: int) -> str:
    return f"{datetime.fromtimestamp(ts, UTC):%Y-%m-%d %H:%M}Z"


class NoParams(BaseModel):
    pass


# ---- budget ------------------------------------------------------------------------------


class SpentWindow(BaseModel):
    window_start: int
    epsilon: float
    copy_missing: bool = False


class MetricSpend(BaseModel):
    window_start: int
    metric: str
    epsilon: float
    scale: float
    threshold: int


class Budget(BaseModel):
    """The privacy ledger: epsilon spent per window, and the cap."""

    cap: float
    windows: list[SpentWindow]
    metrics: list[MetricSpend]

    def render(self, *, verbose: bool = False) -> list[str]:
        lines = [f"epsilon cap per UTC day: {self.cap:g}"]
        if not self.windows:
            lines.append("no window exported yet: nothing spent")
        for window in self.windows:
            note = "  (copy missing: `liberation node adopt`)" if window.copy_missing else ""
            lines.append(f"  {_day(window.window_start)}  epsilon {window.epsilon:.4f}{note}")
        if verbose:
            for m in self.metrics:
                lines.append(f"    {m.metric:20s} epsilon {m.epsilon:.4f}  scale {m.scale:8.2f}  threshold {m.threshold}")
        return lines


def _budget(node: Node) -> Budget:
    entries = node.publisher.ledger()
    per_window: dict[int, float] = {}
    for entry in entries:
        per_window[entry.window_start] = per_window.get(entry.window_start, 0.0) + entry.epsilon
    missing = set()
    for lost in node.publisher.missing():  # published, the store lost the copy and its ledger rows: spent all the same
        if lost.window_start not in per_window:
            per_window[lost.window_start] = lost.epsilon
            missing.add(lost.window_start)
    return Budget(
        cap=node.publisher.cap,
        windows=[SpentWindow(window_start=w, epsilon=e, copy_missing=w in missing) for w, e in sorted(per_window.items())],
        metrics=[
            MetricSpend(window_start=e.window_start, metric=e.metric, epsilon=e.epsilon, scale=e.scale, threshold=e.threshold)
            for e in entries
        ],
    )


async def budget(node: Node, params: NoParams) -> Budget:
    return await asyncio.to_thread(_budget, node)


# ---- export, adopt --------------------------------------------------------------------------


class ExportParams(BaseModel):
    window: str  # as the operator typed it: 2026-11-23, 2026-11-23T05 or unix seconds


class Envelope(BaseModel):
    window_start: int
    envelope: Blob


async def export(node: Node, params: ExportParams) -> Envelope:
    """The signed envelope of a closed window: exported now if it was not yet, the same bytes ever after."""
    window = parse_window(params.window, node.windows.seconds)
    envelope = await asyncio.to_thread(node.export, window)
    return Envelope(window_start=window, envelope=envelope)


class AdoptParams(BaseModel):
    envelope: Blob


class Adopted(BaseModel):
    window_start: int

    def render(self) -> str:
        return f"adopted the published snapshot of {_day(self.window_start)}: the same bytes, no new noise"


async def adopt(node: Node, params: AdoptParams) -> Adopted:
    return Adopted(window_start=await asyncio.to_thread(node.adopt, params.envelope))


# ---- import -----------------------------------------------------------------------------


class ImportParams(BaseModel):
    lines: list[str]


async def import_events(node: Node, params: ImportParams) -> ImportSummary:
    """One batch of `node import`, through the writer: the live ingest path, the same filter and window rules."""
    return await import_batch(node, params.lines)


# ---- push -------------------------------------------------------------------------------


class PushParams(BaseModel):
    retry: bool = False  # also the snapshots the hub refused


class PushReport(BaseModel):
    attempts: list[PushAttempt]

    def render(self) -> list[str]:
        if not self.attempts:
            return ["nothing to push: every snapshot is at the hub"]
        return [attempt.render() for attempt in self.attempts]


async def push(node: Node, params: PushParams) -> PushReport:
    """Send every pending snapshot now, backoff or not (with `retry`, those the hub refused too)."""
    if not node.settings.push.hub_url:
        raise Refused("push.hub_url is not set: snapshots stay here (`liberation node export` carries one by hand)")
    async with aiohttp.ClientSession() as session:
        attempts = await node.outbox.push_now(session, retry_rejected=params.retry)
    return PushReport(attempts=attempts)


BUDGET: Operation[Node, NoParams, Budget] = Operation("budget", NoParams, Budget, budget)
EXPORT: Operation[Node, ExportParams, Envelope] = Operation("export", ExportParams, Envelope, export)
ADOPT: Operation[Node, AdoptParams, Adopted] = Operation("adopt", AdoptParams, Adopted, adopt)
IMPORT: Operation[Node, ImportParams, ImportSummary] = Operation("import", ImportParams, ImportSummary, import_events)
PUSH: Operation[Node, PushParams, PushReport] = Operation("push", PushParams, PushReport, push)
NODE_OPERATIONS: tuple[Operation[Node, Any, Any], ...] = (BUDGET, EXPORT, ADOPT, IMPORT, PUSH)

