"""What the stores of node, hub and share keeper share: numbered migrations, one writer at a time, reader cursors.

`Database` is typed against a small `Connection` protocol (the node hands in its own DuckDB
connection, attached to its store file); `FileDatabase` opens a DuckDB file of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import duckdb

from protocol.errors import LiberationError
from protocol.files import make_private_dir, make_private_files


class Connection(Protocol):
    """The part of a DB-API-like connection (DuckDB's) the stores use."""

    def execute(self, query: str, parameters: Any = ...) -> Any: ...

    def cursor(self) -> Any: ...

    def close(self) -> None: ...


Migration = Callable[[Any], None]


class StoreVersionError(LiberationError):
    """A store made by a version of the software this one cannot read."""


class Database:
    """A connection owned by one store: migrations at open, serialized write transactions."""

    def __init__(
        self, con: Connection, migrations: Sequence[Migration], *, memory_limit: str, catalog: str | None = None
    ) -> None:
        """`catalog`: the attached database holding the tables, if `con` was opened on another (`USE`d by every cursor)."""
        self._con = con
        self._catalog = catalog
        self._lock = threading.Lock()
        self._memory_limit = memory_limit
        con.execute("SET enable_progress_bar = false")  # never draw on a server's stderr
        # Bounded memory: big aggregations spill to `<db>.tmp` rather than grow the process.
        con.execute("SET memory_limit = ?", [memory_limit])
        con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        current = con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchall()[0][0]
        if current > len(migrations):
            raise StoreVersionError(
                f"this store has schema version {current}, and this version of the software knows {len(migrations)}: "
                "it was made by a newer (or a pre-release) version"
            )
        for version, migration in enumerate(migrations, start=1):
            if version > current:
                with self.transaction() as tx:
                    migration(tx)
                    tx.execute("INSERT INTO schema_version VALUES (?)", [version])

    @property
    def schema_version(self) -> int:
        rows = self.cursor().execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchall()
        return int(rows[0][0])

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """The write connection inside BEGIN ... COMMIT (ROLLBACK on error), holding the write lock."""
        with self._lock:
            self._con.execute("BEGIN")
            try:
                yield self._con
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
            self._con.execute("COMMIT")

    def cursor(self) -> Any:
        """A reader connection to the same database (readers never block the writer)."""
        cursor = self._con.cursor()
        cursor.execute("SET enable_progress_bar = false")
        if self._catalog is not None:
            cursor.execute(f"USE {self._catalog}")  # a new cursor starts in the connection's first database
        return cursor

    def memory_bytes(self) -> int:
        """Memory the database engine holds now (its buffer pool, indexes, caches): DuckDB keeps
        table blocks it wrote or read until `memory_limit` forces them out, so this grows toward
        that limit under ingest and is not a leak."""
        rows = self.cursor().execute("SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory()").fetchall()
        return int(rows[0][0])

    def trim_cache(self, *, keep_bytes: int = 16 * 2**20) -> int:
        """Drop cached table blocks beyond `keep_bytes`; return the bytes DuckDB held before minus after.

        DuckDB keeps every table block it wrote or read in memory until `memory_limit` forces it
        out, so a node that only appends would grow toward its limit and stay there. Persistent
        blocks (tag BASE_TABLE) are on disk and safe to drop: lowering the limit to what the
        rest needs (indexes, uncommitted data) plus `keep_bytes`, then restoring it, makes DuckDB
        evict them. Held under the write lock, so no transaction is open meanwhile. A reader
        running at that moment has `keep_bytes` to work in; call it where no big query runs.
        """
        query = "SELECT tag, memory_usage_bytes FROM duckdb_memory()"
        with self._lock:
            before = dict(self._con.execute(query).fetchall())
            cached = int(before.get("BASE_TABLE", 0))
            if cached <= keep_bytes:
                return 0
            keep = max(keep_bytes, 1)  # doubled below: from 0 it would never grow
            try:
                # Blocks of row groups still being written (or not checkpointed yet) are pinned:
                # when the engine cannot get under a limit it changes nothing, so ask for less.
                while keep < cached:
                    try:
                        self._con.execute(f"SET memory_limit = '{int(sum(before.values())) - cached + keep}B'")
                        break
                    except Exception:  # noqa: BLE001 - the engine could not evict enough
                        keep *= 2
            finally:
                self._con.execute("SET memory_limit = ?", [self._memory_limit])
            after = dict(self._con.execute(query).fetchall())
        return int(sum(before.values())) - int(sum(after.values()))

    def close(self) -> None:
        with self._lock:
            self._con.close()


class FileDatabase(Database):
    """A Database on a DuckDB file of its own; the file, its WAL and its spill directory are the service user's only."""

    def __init__(self, path: Path, migrations: Sequence[Migration], *, memory_limit: str) -> None:
        self.path = path
        make_private_dir(path.parent)
        # DuckDB's default spill directory, made here 0700 (DuckDB would use the umask's mode).
        spill = path.with_name(path.name + ".tmp")
        make_private_dir(spill)
        super().__init__(duckdb.connect(str(path), config={"temp_directory": str(spill)}), migrations, memory_limit=memory_limit)
        # DuckDB made the file and its WAL with the umask's mode (a WAL made again after a
        # checkpoint too: the services run under umask 077).
        make_private_files(path, path.with_name(path.name + ".wal"))
