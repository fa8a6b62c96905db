"""Staging: where acked rows wait, durable, until a drain moves them into the store's DuckDB tables.

Acks wait on an append to a stage file (node/stagelog.py), never on DuckDB:
a DuckDB commit costs milliseconds and its checkpoints far more, which would
hold every queued request. The writer appends each group to the active one of
two stage files; `drain` swaps them and moves the full one into `events` and
the windows' session logs, a row group at a time, off the ack path.

Every row has a sequence number; the drained mark (`node_state`) says that
every row at or below it is in `events`. A slice's rows and the raised mark
commit together, so a crash mid-drain moves nothing twice and loses nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from itertools import chain
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from node.dimensions import fit_dimensions
from node.pacing import Rest
from node.rows import RowLayout
from node.schema import ROW_GROUP_ROWS, session_log_table, stage_path
from node.stagelog import StageFile
from runtime.storage import Database


class Staging:
    """The two stage files of a store, their runs of sequence numbers, and the drain into DuckDB."""

    def __init__(self, db: Database, path: Path, layout: RowLayout, domains: Mapping[str, Sequence[str]]) -> None:
        self._db = db
        self._layout = layout
        self._domains = domains
        # `_stage_lock` orders the writer's appends against a drain's swap; `_drain_lock` keeps drains one at a time.
        self._stage_lock = threading.Lock()
        self._drain_lock = threading.Lock()
        self._stages = tuple(StageFile(stage_path(path, i), layout.schema) for i in range(2))
        # Each stage holds one run of seqs, `_first[i]` .. `_first[i] + _staged[i] - 1`:
        # a stage takes appends only from empty until it is drained.
        self._first = [0, 0]
        self._staged = [0, 0]
        self._active = 0
        with db.transaction() as tx:
            tx.execute("INSERT INTO node_state VALUES ('drained_seq', 0) ON CONFLICT (name) DO NOTHING")
        # Rows left staged by a crash move first.
        self._move([0, 1])
        for index in range(len(self._stages)):
            self._clear(index)
        self._next_seq = self.drained_seq() + 1

    @property
    def drain_lock(self) -> threading.Lock:
        """Held by a drain, and by whoever must keep drains out (a rewrite of the store file)."""
        return self._drain_lock

    def append(self, tables: Sequence[pa.Table]) -> None:
        """Append filtered rows (Arrow tables of the layout) to the active stage file; durable on return."""
        rows = pa.concat_tables(tables) if len(tables) > 1 else tables[0] if tables else None
        if rows is None or rows.num_rows == 0:
            return
        with self._stage_lock:
            first, active = self._next_seq, self._active
            self._stages[active].append(first, rows)
            self._next_seq = first + rows.num_rows
            if self._staged[active] == 0:
                self._first[active] = first
            self._staged[active] += rows.num_rows

    @property
    def rows(self) -> int:
        """Rows appended to the stages and not drained yet."""
        return sum(self._staged)

    @property
    def active_rows(self) -> int:
        """Rows in the stage the writer fills: how close the next drain is to due."""
        return self._staged[self._active]

    def runs(self) -> list[tuple[int, int]]:
        """(first seq, rows) of each stage."""
        with self._stage_lock:
            return list(zip(self._first, self._staged, strict=True))

    def drain(self, *, rest: Rest | None = None) -> int:
        """Move every row staged before this call into `events` and the session logs; return how many.

        A stage left full by a failed drain goes first (its rows are older);
        then the stages swap and the one the writer was filling moves.
        `rest` (node/pacing.py), if given, is called between slices, outside
        their transactions.
        """
        with self._drain_lock:
            moved = 0
            with self._stage_lock:
                idle = 1 - self._active
                leftover = self._staged[idle] > 0
            if leftover:
                moved += self._move([idle], rest=rest)
                self._clear(idle)
            with self._stage_lock:
                if self._staged[self._active] == 0:
                    return moved
                full, self._active = self._active, 1 - self._active
            moved += self._move([full], rest=rest)
            self._clear(full)
            return moved

    def drained_seq(self) -> int:
        """The drained mark: every row at or below it is in `events`."""
        return int(self._db.cursor().execute("SELECT value FROM node_state WHERE name = 'drained_seq'").fetchall()[0][0])

    def close(self) -> None:
        for stage in self._stages:
            stage.close()

    def size_bytes(self) -> int:
        return sum(stage.size_bytes() for stage in self._stages)

    def _staged_table(self, indices: Sequence[int]) -> pa.Table | None:
        """The rows of the given stage files in seq order, numbered (a `seq` column first)."""
        runs: list[tuple[int, pa.Table]] = []
        for index in indices:
            with self._stage_lock:
                first, count = self._first[index], self._staged[index]
            held = self._stages[index].held()
            if held is not None and held.num_rows == count:
                # A stage holds one run of seqs from `first` (see `__init__`).
                if count:
                    runs.append((first, held.add_column(0, "seq", pa.array(np.arange(first, first + count, dtype=np.int64)))))
                continue
            records = self._stages[index].records()
            if records:
                # One table per file, not per record: a file of one-row records (light
                # single-event traffic) holds tens of thousands of them.
                seq = chain.from_iterable(range(first, first + batch.num_rows) for first, batch in records)
                table = pa.Table.from_batches([batch for _, batch in records])
                runs.append((records[0][0], table.add_column(0, "seq", pa.array(list(seq), pa.int64()))))
        if not runs:
            return None
        # The two runs never interleave; in seq order, each slice can raise the mark as it commits.
        # A stage written before the catalog changed lacks (or has extra) attribute columns.
        # Left in chunks: a drain combines a slice at a time, not a 20 MB copy at once.
        return pa.concat_tables([table for _, table in sorted(runs, key=lambda run: run[0])], promote_options="default")

    def _move(self, indices: Sequence[int], *, rest: Rest | None = None) -> int:
        """Copy staged rows past the drained mark into the store, raising the mark with each slice."""
        staged = self._staged_table(indices)
        moved = 0 if staged is None else self._move_rows(staged, rest=rest)
        del staged
        # Arrow's allocator keeps freed blocks for reuse: a drain's copy of a stage would stay in the RSS.
        pa.default_memory_pool().release_unused()
        return moved

    def _move_rows(self, staged: pa.Table, *, rest: Rest | None) -> int:
        try:
            return self._insert_moving(staged, rest=rest)
        except duckdb.ConversionException:
            # A value outside a column's ENUM: rows staged under a catalog since changed.
            # Widen the column, then move them (slices already moved are past the mark).
            with self._db.transaction() as tx:
                if not fit_dimensions(tx, self._domains, staged):
                    raise
            return self._insert_moving(staged, rest=rest)

    def _insert_moving(self, staged: pa.Table, *, rest: Rest | None) -> int:
        # The store's columns: the layout's and `seq`. `minute` stays out of `events`, and so does
        # an attribute the catalog dropped since the rows were staged.
        known = {"seq", *self._layout.schema.names} - {"minute"}
        mark = self.drained_seq()
        # Rows at or below the mark are there only after a crash between a move and its emptying.
        moving = staged.filter(pc.greater(staged.column("seq"), mark))
        columns = ", ".join(f'"{c}"' for c in moving.column_names if c in known)
        for offset in range(0, moving.num_rows, ROW_GROUP_ROWS):
            started = time.perf_counter()
            part = moving.slice(offset, ROW_GROUP_ROWS).combine_chunks()
            top = int(pc.max(part.column("seq")).as_py())
            windows = sorted(pc.unique(part.column("window_start")).to_pylist())
            # One slice, its session rows and the raised mark in one short transaction.
            with self._db.transaction() as tx:
                tx.execute(";\n".join(
                    f"""
                    CREATE TABLE IF NOT EXISTS {session_log_table(window)} (
                        session BIGINT NOT NULL,
                        app VARCHAR NOT NULL,
                        seq BIGINT NOT NULL,
                        minute SMALLINT NOT NULL
                    )
                    """
                    for window in windows
                ))
                tx.register("moving_rows", part)
                try:
                    script = [f"INSERT INTO events ({columns}) SELECT {columns} FROM moving_rows"]
                    script += [
                        f"INSERT INTO {session_log_table(window)} SELECT session, app, seq, minute "
                        f"FROM moving_rows WHERE window_start = {int(window)}"
                        for window in windows
                    ]
                    script.append(f"UPDATE node_state SET value = {top} WHERE name = 'drained_seq'")
                    tx.execute(";\n".join(script))
                finally:
                    # In an aborted transaction this fails; the rollback drops the view anyway.
                    with suppress(duckdb.TransactionException):
                        tx.unregister("moving_rows")
            if rest is not None and offset + ROW_GROUP_ROWS < moving.num_rows:
                rest(time.perf_counter() - started)  # the write lock and the transaction are released
        return int(moving.num_rows)

    def _clear(self, index: int) -> None:
        """Empty a drained stage file, off the ack path."""
        self._stages[index].reset()
        with self._stage_lock:
            self._staged[index] = 0
