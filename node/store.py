"""The node's store: one DuckDB file and its two stage files, and the jobs on them.

    node/schema.py       tables, names per window, opening the file
    node/staging.py      stage files and the drain into DuckDB (writer, maintenance)
    node/sessionfold.py  per-session state: fold and drop (maintenance, export)
    node/compaction.py   the rewrite that makes deleted rows leave the file
    this module          owns the files, retention deletes, and reads
Only the writer task stages rows, and it never touches DuckDB; drains, folds
and the export pass take the store's write lock; readers use their own cursor.
Deleting a row or dropping a table frees its blocks without overwriting them:
after a retention delete or a drop of session state the export pass rewrites
the file (`compact`), so what was deleted leaves the disk's file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import duckdb
import pyarrow as pa

from node.compaction import GatedCursor, ReaderGate, remove_leftovers, rewrite
from node.dimensions import dimension_domains, fit_dimensions
from node.pacing import Rest
from node.privacy import FilteredEvent
from node.rows import RowLayout
from node.schema import (
    ERASE_PENDING,
    MIGRATIONS,
    STORE_CATALOG,
    attach_store,
    connect_store,
    mark_erase_pending,
    wal_path,
)
from node.sessionfold import FOLD_STEP_ROWS, SessionFold
from node.staging import Staging
from protocol.catalog import Catalog
from protocol.files import make_private_dir, make_private_files
from runtime.storage import Database


class Store(Database):
    """Owns the files of one node: the DuckDB store and its two stage files."""

    def __init__(self, path: Path, catalog: Catalog, *, memory_limit: str = "640MB") -> None:
        self.path = path
        self.catalog = catalog
        make_private_dir(path.parent)
        remove_leftovers(path)  # a rewrite a crash interrupted: the store itself is whole
        self._gate = ReaderGate()
        super().__init__(connect_store(path), MIGRATIONS, memory_limit=memory_limit, catalog=STORE_CATALOG)
        # DuckDB made the file (and its WAL) with the umask's mode; they hold raw rows. (A WAL it
        # makes again after a checkpoint gets the umask's mode: the services run under umask 077.)
        make_private_files(path, wal_path(path))
        self.layout = RowLayout(catalog)
        # Dimension columns are ENUMs of the catalog's domains; a new attribute gets a nullable column.
        domains = dimension_domains(catalog)
        with self.transaction() as tx:
            fit_dimensions(tx, domains)
        self.staging = Staging(self, path, self.layout, domains)
        self.sessions = SessionFold(self)

    # ---- writes ------------------------------------------------------------------

    def commit_events(self, events: Sequence[FilteredEvent]) -> None:
        """Store events and their session state; durable and in `events` on return (import, tests)."""
        if events:
            self.commit_rows([self.layout.table([self.layout.block(events)])])

    def commit_rows(self, tables: Sequence[pa.Table]) -> None:
        """Stage rows and drain them: durable and in `events` on return."""
        self.staging.append(tables)
        self.staging.drain()

    def stage_rows(self, tables: Sequence[pa.Table]) -> None:
        """Append filtered rows to the active stage file; durable on return (node/staging.py)."""
        self.staging.append(tables)

    @property
    def staged_rows(self) -> int:
        """Rows appended to the stages and not drained yet."""
        return self.staging.rows

    def drain(self, *, rest: Rest | None = None) -> int:
        """Move every staged row into `events` and the session logs (node/staging.py); how many."""
        return self.staging.drain(rest=rest)

    def fold_sessions(self, *, rest: Rest | None = None, window: int | None = None, step_rows: int = FOLD_STEP_ROWS) -> int:
        """Fold logged session rows into per-session state (node/sessionfold.py); how many."""
        return self.sessions.fold(rest=rest, window=window, step_rows=step_rows)

    def drop_session_state(self, tx: duckdb.DuckDBPyConnection, window_start: int) -> None:
        """Drop a window's session state inside the caller's transaction (node/sessionfold.py)."""
        self.sessions.drop(tx, window_start)

    def delete_rows(self, tx: duckdb.DuckDBPyConnection, *, until: int) -> int:
        """Delete the raw rows of every window starting at or before `until`, inside the caller's transaction (retention)."""
        deleted = int(tx.execute("DELETE FROM events WHERE window_start <= ?", [until]).fetchall()[0][0])
        if deleted:
            mark_erase_pending(tx)
        return deleted

    def erase_pending(self) -> bool:
        """Whether rows were deleted or session state dropped since the file was last rewritten (`compact`)."""
        rows = self.cursor().execute(f"SELECT value FROM node_state WHERE name = '{ERASE_PENDING}'").fetchall()
        return bool(rows and rows[0][0])

    def compact(self) -> None:
        """Rewrite the file with live rows only, so deleted rows and dropped state leave the disk (node/compaction.py).

        Drains and writes wait meanwhile (acks do not: they wait on the stage
        files); readers go on until the swap, then wait for it. DuckDB runs it
        on one thread, so the other core stays with requests (`SessionFold.one_thread`).
        """
        with self.sessions.one_thread(), self.staging.drain_lock, self._lock:
            con = cast(duckdb.DuckDBPyConnection, self._con)
            rewrite(con, self.path, catalog=STORE_CATALOG, attach=attach_store, gate=self._gate, forget=ERASE_PENDING)
        make_private_files(self.path)

    def close(self) -> None:
        """Drain what is staged (so the store file stands alone), then close."""
        try:
            self.drain()
        except duckdb.Error:
            pass  # the rows stay staged, durable, and move at the next open
        self.staging.close()
        super().close()

    # ---- reads -----------------------------------------------------------------

    def cursor(self) -> Any:
        """A reader cursor whose queries wait while `compact` swaps the file (between them, never during one)."""
        with self._gate.reading():
            return GatedCursor(super().cursor(), self._gate)

    def row_count(self) -> int:
        """Events stored, staged ones included (each once, also while a drain is between its two steps)."""
        runs = self.staging.runs()
        # Read after the runs: a row moved since is at or below this mark, and counted in `events`.
        stored, mark = self.cursor().execute(
            "SELECT (SELECT count(*) FROM events), "
            "(SELECT coalesce(max(value), 0) FROM node_state WHERE name = 'drained_seq')"
        ).fetchall()[0]
        return int(stored) + sum(max(0, min(rows, first + rows - 1 - int(mark))) for first, rows in runs)

    def size_bytes(self) -> int:
        """Bytes on disk of the store's database, its write-ahead log and the stage files."""
        total = self.staging.size_bytes()
        for p in (self.path, wal_path(self.path)):
            try:
                total += p.stat().st_size
            except FileNotFoundError:
                pass
        return total
