"""A stage file: the append-only, checksummed log that the writer's group commits (and so the acks) wait on.

File layout (integers little-endian):

    header   b"LSTG" | u32 length | CRC-32 of the schema | the rows' Arrow schema (IPC)
    record   b"LREC" | u64 first seq | u32 rows | u32 length | CRC-32 | one Arrow record batch (IPC)
    record   ...

The record's CRC covers its seq, rows, length and batch bytes; its rows are
numbered first, first + 1, ... A record is durable once `append` returned
(one write, then fdatasync). A crash can leave a torn last record, never
acknowledged: opening the file stops at the first record that does not
check out and cuts the file there, so later appends follow good records.

Why a file of our own rather than a DuckDB table: a DuckDB commit of a few
hundred rows costs 1.5-2.7 ms of CPU here (statement, Arrow scan, its own
WAL, fsync), at a few hundred commits a second; this costs a write and an
fdatasync. DuckDB gets the rows in big transactions when a drain moves them.

The file also keeps what it appended since its last `reset` in memory (up to
`HELD_BYTES`), so a drain takes the rows from there instead of reading and
decoding the file again (22-70 ms of CPU per 131,072 rows; from memory,
4-20 ms). The file stays the only copy that counts: the
memory holds exactly the records whose append returned, and a file opened
with records in it (a restart) is read back.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path

import pyarrow as pa

from protocol.files import fsync_directory

_HEADER = struct.Struct("<4sII")  # magic, schema length, CRC-32 of the schema
_RECORD = struct.Struct("<4sQIII")  # magic, first seq, rows, batch length, CRC-32
log = logging.getLogger("liberation.node.store")

_HEADER_MAGIC = b"LSTG"
_RECORD_MAGIC = b"LREC"

HELD_BYTES = 96 * 1024 * 1024
"""Past this many bytes of appended rows a stage file stops keeping them in memory (a drain then reads the file).

A drain's worth (131,072 rows) is about 20 MB; a stage holds more only while
a drain is behind, and then the node's memory must not grow with the backlog.
"""
_HELD_TAIL = 256  # appends kept apart before they are merged into one table (one-row appends add up) ...
_HELD_TAIL_ROWS = 16_384  # ... or this many rows: a merge copies a few MB at most, on the writer's commit


class StageFile:
    """One stage file, opened for appends: `records` to read it back, `append` to add rows durably, `reset` to empty it."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path = path
        self.schema = schema
        created = not path.exists()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if created:
            fsync_directory(path.parent)  # the file itself must survive a crash, not just its bytes
        self._end = 0  # the end of the last good record: where the next append goes
        self._written_schema: pa.Schema | None = None
        self._dirty = False  # a failed append may have left bytes past `_end`
        # The rows appended since the last reset, as tables merged `_HELD_TAIL` appends at a
        # time plus the latest appends; None when the file may hold rows not in them.
        self._held: list[pa.Table] | None = None
        self._tail: list[pa.Table] = []
        self._tail_rows = 0
        self._held_bytes = 0

    def records(self) -> list[tuple[int, pa.RecordBatch]]:
        """The good records as (first seq, rows), in file order; the next `append` goes after the last of them."""
        data = _read_all(self._fd)
        view = memoryview(data)  # records are checked and decoded in place, not copied out
        schema, offset = _read_header(data)
        self._written_schema, self._end = schema, offset
        found: list[tuple[int, pa.RecordBatch]] = []
        while schema is not None and offset + _RECORD.size <= len(data):
            magic, first, rows, length, crc = _RECORD.unpack_from(data, offset)
            start = offset + _RECORD.size
            body = view[start:start + length]
            if magic != _RECORD_MAGIC or len(body) != length or zlib.crc32(body, zlib.crc32(view[offset + 4:start - 4])) != crc:
                break  # torn or never finished: it was not acknowledged
            batch = pa.ipc.read_record_batch(pa.py_buffer(body), schema)
            if batch.num_rows != rows:
                break
            found.append((first, batch))
            offset = self._end = start + length
        self._dirty = len(data) > self._end  # a torn tail: cut before the next append
        if self._dirty:
            log.warning(
                "stage file: bytes after the last good record dropped (a write cut short by a crash, or damage)",
                extra={"file": self.path.name, "bytes": len(data) - self._end, "records": len(found)},
            )
        return found

    def held(self) -> pa.Table | None:
        """The rows appended since the last `reset`, in order, from memory; None if they must be read from the file."""
        if self._held is None:
            return None
        tables = [*self._held, *self._tail]
        return pa.concat_tables(tables) if tables else self.schema.empty_table()

    def reset(self) -> None:
        """Empty the file (its rows were moved) and start it with this layout's schema; durable on return."""
        self._held, self._tail, self._tail_rows, self._held_bytes = None, [], 0, 0
        schema = self.schema.serialize().to_pybytes()
        os.ftruncate(self._fd, 0)
        _write_at(self._fd, _HEADER.pack(_HEADER_MAGIC, len(schema), zlib.crc32(schema)) + schema, 0)
        os.fsync(self._fd)  # the size changed: fsync, not fdatasync
        self._end = _HEADER.size + len(schema)
        self._written_schema = self.schema
        self._dirty = False
        self._held = []

    def append(self, first: int, rows: pa.Table) -> None:
        """Write `rows` (numbered from `first`) after the last good record; durable on return.

        If the write or the sync fails, the rows were not acknowledged: the
        file is cut back to its last good record at once (or, if that fails
        too, before the next append), so they never reach the store.
        """
        if self._written_schema is None or not self._written_schema.equals(rows.schema):
            raise ValueError("rows of another layout than the stage file's")
        if self._dirty:
            os.ftruncate(self._fd, self._end)
            self._dirty = False
        rows = rows.combine_chunks()
        batch = rows.to_batches()[0] if rows.num_rows else None
        body = batch.serialize().to_pybytes() if batch is not None else b""
        fields = struct.pack("<QII", first, rows.num_rows, len(body))
        record = _RECORD_MAGIC + fields + struct.pack("<I", zlib.crc32(body, zlib.crc32(fields))) + body
        try:
            _write_at(self._fd, record, self._end)
            os.fdatasync(self._fd)
        except BaseException:
            self._cut()
            raise
        self._end += len(record)
        self._hold(rows)

    def _hold(self, rows: pa.Table) -> None:
        if self._held is None:
            return
        self._held_bytes += rows.nbytes
        if self._held_bytes > HELD_BYTES:
            self._held, self._tail, self._tail_rows = None, [], 0  # a drain is far behind: it reads the file
            return
        self._tail.append(rows)
        self._tail_rows += rows.num_rows
        if len(self._tail) >= _HELD_TAIL or self._tail_rows >= _HELD_TAIL_ROWS:
            # Merged, so a stage of one-row appends is not tens of thousands of tiny tables;
            # a big append alone is kept as it is.
            tail = self._tail
            self._held.append(tail[0] if len(tail) == 1 else pa.concat_tables(tail).combine_chunks())
            self._tail, self._tail_rows = [], 0

    def _cut(self) -> None:
        try:
            os.ftruncate(self._fd, self._end)
            os.fsync(self._fd)
            self._dirty = False
        except OSError:
            self._dirty = True

    def size_bytes(self) -> int:
        return os.fstat(self._fd).st_size

    def close(self) -> None:
        os.close(self._fd)


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0) if size else b""


def _read_header(data: bytes) -> tuple[pa.Schema | None, int]:
    """The schema the file's records were written with, and where they start (no header: no records)."""
    if len(data) < _HEADER.size:
        return None, 0
    magic, length, crc = _HEADER.unpack_from(data)
    raw = data[_HEADER.size:_HEADER.size + length]
    if magic != _HEADER_MAGIC or len(raw) != length or zlib.crc32(raw) != crc:
        return None, 0
    return pa.ipc.read_schema(pa.py_buffer(raw)), _HEADER.size + length


def _write_at(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
