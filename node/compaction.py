"""Physical deletion for the store: its file rewritten with live rows only and swapped in whole.

DuckDB frees the blocks of deleted rows and dropped tables without overwriting
them: after an export and retention the session hashes of a deleted window
were still in `node.duckdb`, 11 copies each (security review M2, audit F6).
`COPY FROM DATABASE` writes the live rows into a new file; once that is on
disk it is renamed over the old one, so what was deleted leaves the file for
good (the file system frees the old blocks without scrubbing them: full-disk
encryption is the answer there, docs/privacy.md).

Readers keep their cursors throughout: the store is detached and attached
again under the same name on the same DuckDB connection, and a gate holds new
queries back and waits for running ones meanwhile (a query that outlived the
detach would keep the old database open on the unlinked file).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from protocol.files import fsync_directory, make_private_files

COMPACT_CATALOG = "node_compact"


def compact_path(path: Path) -> Path:
    """Where the store at `path` is rewritten before the new file replaces it."""
    return path.with_name(path.name + ".compact")


def remove_leftovers(path: Path) -> None:
    """Delete a rewrite a crash left unfinished (a copy of raw rows, never the store itself)."""
    target = compact_path(path)
    for leftover in (target, target.with_name(target.name + ".wal")):
        leftover.unlink(missing_ok=True)


class ReaderGate:
    """Many queries at once, or one swap of the database file alone."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._swapping = False

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            while self._swapping:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def alone(self) -> Iterator[None]:
        with self._cond:
            while self._swapping:
                self._cond.wait()
            self._swapping = True  # new readers wait from here on ...
            while self._readers:
                self._cond.wait()  # ... and the running ones finish
        try:
            yield
        finally:
            with self._cond:
                self._swapping = False
                self._cond.notify_all()


class GatedCursor:
    """A reader cursor whose queries pass the gate; results are materialized by `execute`, so fetching needs no gate."""

    def __init__(self, cursor: duckdb.DuckDBPyConnection, gate: ReaderGate) -> None:
        self._cursor = cursor
        self._gate = gate

    def execute(self, query: str, parameters: Any = None) -> duckdb.DuckDBPyConnection:
        with self._gate.reading():
            return self._cursor.execute(query, parameters)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


CHECKPOINT_TRIES = 200
"""A checkpoint refused while a reader still holds its transaction is tried again, 10 ms apart."""


def _checkpoint(con: duckdb.DuckDBPyConnection, catalog: str, gate: ReaderGate) -> None:
    """CHECKPOINT `catalog` with no reader inside; a reader still fetching its last result keeps its
    transaction open after the gate let it out, and DuckDB refuses a checkpoint beside it: retry."""
    for attempt in range(CHECKPOINT_TRIES):
        with gate.alone():
            try:
                con.execute(f"CHECKPOINT {catalog}")
                return
            except duckdb.TransactionException:
                if attempt + 1 == CHECKPOINT_TRIES:
                    raise
        time.sleep(0.01)


def rewrite(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    *,
    catalog: str,
    attach: Callable[[duckdb.DuckDBPyConnection, Path, str], None],
    gate: ReaderGate,
    forget: str,
) -> None:
    """Copy the attached store `catalog` (file `path`) into a new file and put it in the old one's place.

    The caller holds every write lock of the store: nothing is written to it
    meanwhile (readers go on while the copy runs). `attach(con, file, name)`
    attaches a file with the store's options (its row group size, which
    DuckDB does not keep in the file); `forget` is a `node_state` name deleted
    in the copy (the store's mark that a rewrite is due). A failure before the rename leaves
    the old file in place and removes the copy.
    """
    target = compact_path(path)
    remove_leftovers(path)
    _checkpoint(con, catalog, gate)
    try:
        attach(con, target, COMPACT_CATALOG)
        # DuckDB made it with the umask's mode, before a row is in it; it will hold raw rows.
        make_private_files(target)
        try:
            con.execute(f"COPY FROM DATABASE {catalog} TO {COMPACT_CATALOG}")
            con.execute(f"DELETE FROM {COMPACT_CATALOG}.node_state WHERE name = ?", [forget])
            _checkpoint(con, COMPACT_CATALOG, gate)
        finally:
            con.execute(f"DETACH {COMPACT_CATALOG}")
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        remove_leftovers(path)
        raise
    with gate.alone():
        con.execute("USE memory")
        con.execute(f"DETACH {catalog}")
        try:
            # Detached after a checkpoint with no write since: no WAL of the old file may
            # survive it, or DuckDB would replay it into the new one.
            wal = path.with_name(path.name + ".wal")
            if wal.exists() and wal.stat().st_size:
                raise RuntimeError("the store's WAL is not empty after a checkpoint: not rewritten")
            wal.unlink(missing_ok=True)
            os.replace(target, path)
            fsync_directory(path.parent)
        except BaseException:
            remove_leftovers(path)
            raise
        finally:
            _attach_when_released(con, path, catalog, attach)
            con.execute(f"USE {catalog}")


RELEASE_SECONDS = 30.0
"""How long the store's attach waits for DuckDB to let go of the detached file (2-30 ms measured)."""


def _attach_when_released(
    con: duckdb.DuckDBPyConnection, path: Path, catalog: str, attach: Callable[[duckdb.DuckDBPyConnection, Path, str], None]
) -> None:
    """Attach `path` as soon as DuckDB has closed the detached database of the same path.

    A detached database closes a few milliseconds after the last query that
    used it returned (measured 2-30 ms with readers busy until the gate
    closed); until then DuckDB refuses a second attach of its path.
    """
    deadline = time.monotonic() + RELEASE_SECONDS
    pause = 0.001
    while True:
        try:
            attach(con, path, catalog)
            return
        except duckdb.ResourceInUseException:
            if time.monotonic() > deadline:
                raise
            time.sleep(pause)
            pause = min(0.1, pause * 2)
