"""What node and hub stores share: numbered migrations, one writer at a time, reader cursors.

Typed against a small `Connection` protocol rather than duckdb itself, so
`protocol` stays free of the database (node and hub hand in DuckDB).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol


class Connection(Protocol):
    """The part of a DB-API-like connection (DuckDB's) the stores use."""

    def execute(self, query: str, parameters: Any = ...) -> Any: ...

    def cursor(self) -> Any: ...

    def close(self) -> None: ...


Migration = Callable[[Any], None]


class Database:
    """A connection owned by one store: migrations at open, serialized write transactions."""

    def __init__(self, con: Connection, migrations: Sequence[Migration], *, memory_limit: str) -> None:
        self._con = con
        self._lock = threading.Lock()
        con.execute("SET enable_progress_bar = false")  # never draw on a server's stderr
        # Bounded memory: big aggregations spill to `<db>.tmp` rather than grow the process.
        con.execute("SET memory_limit = ?", [memory_limit])
        con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        current = con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchall()[0][0]
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
        return cursor

    def memory_bytes(self) -> int:
        """Memory the database engine holds now (its buffer pool, indexes, caches): DuckDB keeps
        table blocks it wrote or read until `memory_limit` forces them out, so this grows toward
        that limit under ingest and is not a leak."""
        rows = self.cursor().execute("SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory()").fetchall()
        return int(rows[0][0])

    def close(self) -> None:
        with self._lock:
            self._con.close()
