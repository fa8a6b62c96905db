"""The handoff from ingest workers to the main process: its wire formats, on the main's Unix sockets only.

Rows: a worker filters events itself, then sends the rows of a group of
requests as one frame on the main's rows socket (`rows_socket`), a
connection it keeps open; the main process answers once its writer
committed them (acked means durable). It re-checks every row's window at
that moment: a worker's cached salt must never let an event into an
exported window. The frame is the worker's counter deltas (JSON) and the
rows (an Arrow IPC stream):

    request  b"LROW" | u32 counts length | u32 rows length | counts | rows
    answer   u16 status | u32 length | JSON body
             200 {"closed": [window, ...]}: committed, but for the rows of closed windows
             400 the frame or its rows are not what this main takes (the connection closes)
             503 the commit failed: nothing stored

(A frame rather than an HTTP request: at half the node's maximum the main
answers hundreds of handoffs a second, and aiohttp's request and response
machinery, on both sides, cost more CPU than the rows' commit.)

Salts and counts, a few a second, are HTTP routes on the main's app socket:
workers fetch salts from `SALT_PATH` and ship counter deltas between
handoffs to `COUNTS_PATH`. None of these is on the public port.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
from aiohttp import web

from node.metrics import NodeMetrics
from node.writer import Rows, StorageUnavailable

PREFIX = "/_internal/"
SALT_PATH = "/_internal/salt/{window}"
COUNTS_PATH = "/_internal/counts"

_FRAME = struct.Struct("<4sII")  # magic, counts length, rows length
_ANSWER = struct.Struct("<HI")  # status, body length
_FRAME_MAGIC = b"LROW"
MAX_FRAME_BYTES = 256 * 1024 * 1024
"""A worker's group is at most `commit_max_rows` rows: a few MB of Arrow."""
HANDOFF_TIMEOUT_SECONDS = 120.0


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
    """An Arrow IPC stream -> rows; ValueError if it is not one, or of another layout (a worker of another catalog)."""
    try:
        table = pa.ipc.open_stream(body).read_all()
    except pa.ArrowException as exc:
        raise ValueError("not an Arrow IPC stream") from exc
    if not table.schema.equals(schema):
        raise ValueError("rows of another layout")
    return table


def rows_socket(socket_path: Path) -> Path:
    """The main's rows socket, beside its app socket `socket_path` (same private directory)."""
    return socket_path.with_name(socket_path.stem + ".rows.sock")


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


async def commit_handoff(target: HandoffTarget, schema: pa.Schema, counts: bytes, body: bytes) -> tuple[int, bytes]:
    """One rows frame: add the counts, commit the rows of open windows; the answer's status and body."""
    try:
        _add_counts(target, counts.decode())
        table = decode_rows(body, schema)
    except ValueError:  # not UTF-8, not JSON, not Arrow, or another layout
        return 400, b"{}"
    windows: Sequence[int] = pc.unique(table.column("window_start")).to_pylist()
    closed = [w for w in windows if not target.window_open(_window(w))]
    if closed:
        table = table.filter(pc.invert(pc.is_in(table.column("window_start"), pa.array(closed, pa.int64()))))
    try:
        await target.commit_rows(table)
    except StorageUnavailable:
        return 503, b"{}"
    return 200, json.dumps({"closed": closed}).encode()


async def serve_rows(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: HandoffTarget, schema: pa.Schema) -> None:
    """Serve one worker's connection to the rows socket: frames in, one answer each, until it closes."""
    try:
        while True:
            try:
                magic, counts_length, rows_length = _FRAME.unpack(await reader.readexactly(_FRAME.size))
            except asyncio.IncompleteReadError:
                return  # the worker closed the connection between frames
            if magic != _FRAME_MAGIC or counts_length + rows_length > MAX_FRAME_BYTES:
                writer.write(_answer(400, b"{}"))
                return
            counts = await reader.readexactly(counts_length)
            body = await reader.readexactly(rows_length)
            status, answer = await commit_handoff(target, schema, counts, body)
            writer.write(_answer(status, answer))
            await writer.drain()
            if status == 400:
                return
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # the worker went away mid-frame: nothing of it was committed
    finally:
        writer.close()


def _answer(status: int, body: bytes) -> bytes:
    return _ANSWER.pack(status, len(body)) + body


class RowsChannel:
    """A worker's connection to the main's rows socket: one frame out and its answer back at a time."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def send(self, counts: bytes, rows: bytes) -> tuple[int, bytes]:
        """Send one frame; (status, body) of the answer. OSError, EOFError or TimeoutError if there was none."""
        try:
            async with asyncio.timeout(HANDOFF_TIMEOUT_SECONDS):
                if self._streams is None:
                    self._streams = await asyncio.open_unix_connection(str(self._path))
                reader, writer = self._streams
                writer.write(_FRAME.pack(_FRAME_MAGIC, len(counts), len(rows)) + counts + rows)
                await writer.drain()
                status, length = _ANSWER.unpack(await reader.readexactly(_ANSWER.size))
                answer = await reader.readexactly(length)
        except BaseException:
            self.close()  # an answer half read, or none: the next frame goes on a new connection
            raise
        if status == 400:
            self.close()  # the main closes its end after a refusal
        return status, answer

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


async def receive_counts(request: web.Request, target: HandoffTarget) -> web.Response:
    """`POST COUNTS_PATH`: a worker's counter deltas between commits."""
    _add_counts(target, await request.text())
    return web.Response(status=204)
