"""The handoff from ingest workers to the main process: routes served on its Unix socket only, and their wire format.

A worker filters events itself, then posts the rows as an Arrow IPC stream to
`ROWS_PATH`; the main process answers once its writer committed them (acked
means durable). It re-checks every row's window at that moment: a worker's
cached salt must never let an event into an exported window. Workers fetch
salts from `SALT_PATH` and ship their counter deltas in `COUNTS_HEADER` (with
rows) or to `COUNTS_PATH`. None of these routes is on the public port.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
from aiohttp import web

from node.metrics import NodeMetrics
from node.writer import Rows, StorageUnavailable

PREFIX = "/_internal/"
SALT_PATH = "/_internal/salt/{window}"
ROWS_PATH = "/_internal/rows"
COUNTS_PATH = "/_internal/counts"
COUNTS_HEADER = "X-Liberation-Counts"
ARROW_STREAM = "application/vnd.apache.arrow.stream"


class HandoffTarget(Protocol):
    """What the routes need of the main process's node (node.app.Node has it)."""

    metrics: NodeMetrics

    def window_open(self, window: datetime) -> bool: ...

    def salt_for(self, window: datetime) -> bytes | None: ...

    async def commit_rows(self, rows: Rows) -> None: ...


def encode_rows(table: pa.Table) -> bytes:
    """Rows -> one Arrow IPC stream."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def decode_rows(body: bytes, schema: pa.Schema) -> pa.Table:
    """An Arrow IPC stream -> rows; a table of another layout (a worker of another catalog) is refused."""
    table = pa.ipc.open_stream(body).read_all()
    if not table.schema.equals(schema):
        raise web.HTTPBadRequest(text="rows of another layout")
    return table


def encode_counts(deltas: dict[str, float]) -> str:
    return json.dumps(deltas, separators=(",", ":"))


def _add_counts(target: HandoffTarget, text: str | None) -> None:
    if text:
        deltas: Any = json.loads(text)
        if isinstance(deltas, dict):
            target.metrics.add_counts(deltas)


def _window(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


async def serve_salt(request: web.Request, target: HandoffTarget) -> web.Response:
    """`GET SALT_PATH`: the window's salt (32 bytes), or 410 when the window takes no more events."""
    window = _window(int(request.match_info["window"]))
    salt = await asyncio.to_thread(target.salt_for, window)  # may create and fsync the day's file
    if salt is None:
        return web.Response(status=410)
    return web.Response(body=salt, content_type="application/octet-stream")


async def receive_rows(request: web.Request, target: HandoffTarget, schema: pa.Schema) -> web.Response:
    """`POST ROWS_PATH`: commit the rows of open windows; answer the closed ones, which were not stored."""
    _add_counts(target, request.headers.get(COUNTS_HEADER))
    table = decode_rows(await request.read(), schema)
    windows: Sequence[int] = pc.unique(table.column("window_start")).to_pylist()
    closed = [w for w in windows if not target.window_open(_window(w))]
    if closed:
        table = table.filter(pc.invert(pc.is_in(table.column("window_start"), pa.array(closed, pa.int64()))))
    try:
        await target.commit_rows(table)
    except StorageUnavailable:
        return web.Response(status=503)
    return web.json_response({"closed": closed})


async def receive_counts(request: web.Request, target: HandoffTarget) -> web.Response:
    """`POST COUNTS_PATH`: a worker's counter deltas between commits."""
    _add_counts(target, await request.text())
    return web.Response(status=204)
