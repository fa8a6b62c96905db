"""The node's DuckDB store: schema and migrations, hour-truncated rows, session state, retention.

Tables (times are unix seconds, UTC; nothing finer than an hour except the
per-session minutes, which live only until the window is exported):
    events        one row per accepted event: window, hour, session hash, app,
                  action, country and one `a_<attribute>` column per declared attribute
    sessions_<w>  per (session, app) of window w: order of first use (first_seq) and
                  the first/last minute inside the window, for durations and tool pairs
    session_log_<w>  the (session, app, seq, minute) of each event committed since
                  the last fold: appended by every commit (no per-commit aggregate or
                  upsert), folded into sessions_<w> by `fold_sessions` on every export
                  pass (60 s by default) and dropped; so an event's minute is kept
                  only until the next pass
    Both are dropped at export.
    snapshots, ledger, outbox, node_state   see node/export.py and node/outbox.py
Only the writer task calls the mutating methods; readers use their own cursor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from node.privacy import FilteredEvent
from node.rows import RowLayout
from protocol.catalog import Catalog
from protocol.storage import Database

Migration = Callable[[duckdb.DuckDBPyConnection], None]


def _v1(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        """
        CREATE TABLE events (
            seq BIGINT NOT NULL,
            window_start BIGINT NOT NULL,
            hour BIGINT NOT NULL,
            session BIGINT NOT NULL,
            app VARCHAR NOT NULL,
            action VARCHAR NOT NULL,
            country VARCHAR NOT NULL
        )
        """
    )


def _v2(con: duckdb.DuckDBPyConnection) -> None:
    # Published snapshots (the committed noise), the append-only privacy ledger,
    # the push outbox, and small named values such as the node's first window.
    con.execute(
        """
        CREATE TABLE snapshots (
            window_start BIGINT PRIMARY KEY,
            window_end BIGINT NOT NULL,
            seq BIGINT NOT NULL UNIQUE,
            catalog VARCHAR NOT NULL,
            digest VARCHAR NOT NULL,
            envelope BLOB NOT NULL,
            created BIGINT NOT NULL
        )
        """
    )
    con.execute(
        """
        CREATE TABLE ledger (
            window_start BIGINT NOT NULL,
            metric VARCHAR NOT NULL,
            epsilon DOUBLE NOT NULL,
            scale DOUBLE NOT NULL,
            threshold INTEGER NOT NULL,
            catalog VARCHAR NOT NULL,
            digest VARCHAR NOT NULL,
            recorded BIGINT NOT NULL
        )
        """
    )
    con.execute(
        """
        CREATE TABLE outbox (
            seq BIGINT PRIMARY KEY,
            window_start BIGINT NOT NULL,
            state VARCHAR NOT NULL,
            attempts INTEGER NOT NULL,
            next_attempt DOUBLE NOT NULL,
            last_status INTEGER,
            last_error VARCHAR
        )
        """
    )
    con.execute("CREATE TABLE node_state (name VARCHAR PRIMARY KEY, value BIGINT NOT NULL)")


MIGRATIONS: tuple[Migration, ...] = (_v1, _v2)
"""Schema migrations in order; the schema version is their count."""


def session_table(window_start: int) -> str:
    """The folded per-session state of one window lives in its own table, dropped whole at export.

    (A DELETE of a day's million session rows from one shared indexed table
    takes seconds; DROP TABLE takes none.)
    """
    return f"sessions_{int(window_start)}"


def session_log_table(window_start: int) -> str:
    """The per-event session rows of one window not folded yet."""
    return f"session_log_{int(window_start)}"


def session_tables(con: duckdb.DuckDBPyConnection) -> list[int]:
    """Windows that still have per-session state, folded or not."""
    rows = con.execute(
        "SELECT table_name FROM duckdb_tables() "
        "WHERE table_name LIKE 'sessions\\_%' ESCAPE '\\' OR table_name LIKE 'session\\_log\\_%' ESCAPE '\\'"
    ).fetchall()
    return sorted({int(name.rsplit("_", 1)[1]) for (name,) in rows})


def _tables_of(con: duckdb.DuckDBPyConnection, window_start: int) -> tuple[bool, bool]:
    names = {name for (name,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    return session_table(window_start) in names, session_log_table(window_start) in names


def session_state(con: duckdb.DuckDBPyConnection, window_start: int) -> str:
    """SQL of one window's session state, one row per (session, app): folded rows plus unfolded events.

    The fold takes the earliest first use and the widest span of minutes,
    which is what `fold_sessions` keeps.
    """
    folded, log = _tables_of(con, window_start)
    parts = ["SELECT 0::BIGINT AS session, '' AS app, 0::BIGINT AS first_seq, 0::SMALLINT AS first_minute, "
             "0::SMALLINT AS last_minute WHERE false"]
    if folded:
        parts.append(f"SELECT session, app, first_seq, first_minute, last_minute FROM {session_table(window_start)}")
    if log:
        parts.append(f"SELECT session, app, seq, minute, minute FROM {session_log_table(window_start)}")
    return (
        "SELECT session, app, min(first_seq) AS first_seq, min(first_minute) AS first_minute, "
        f"max(last_minute) AS last_minute FROM ({' UNION ALL '.join(parts)}) GROUP BY session, app"
    )


def attribute_column(name: str) -> str:
    """Column of a declared attribute; names are catalog slugs, so quoting is safe."""
    return '"a_' + name.replace("-", "_") + '"'


class Store(Database):
    """Owns the DuckDB file of one node."""

    def __init__(self, path: Path, catalog: Catalog, *, memory_limit: str = "640MB") -> None:
        self.path = path
        self.catalog = catalog
        path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(duckdb.connect(str(path)), MIGRATIONS, memory_limit=memory_limit)
        self.layout = RowLayout(catalog)
        self._attrs = self.layout.attributes
        # The catalog may declare new attributes: each gets a nullable column.
        with self.transaction() as tx:
            for name in self._attrs:
                tx.execute(f"ALTER TABLE events ADD COLUMN IF NOT EXISTS {attribute_column(name)} VARCHAR")
        self._next_seq = int(self.cursor().execute("SELECT coalesce(max(seq), 0) + 1 FROM events").fetchall()[0][0])
        self._logged: set[int] = set()  # windows whose session-log table this store created and has not dropped

    # ---- writes (writer task only) ---------------------------------------------

    def commit_events(self, events: Sequence[FilteredEvent]) -> None:
        """Store events and their session state in one transaction; durable on return."""
        if events:
            self.commit_rows([self.layout.table([self.layout.block(events)])])

    def commit_rows(self, tables: Sequence[pa.Table]) -> None:
        """Store filtered rows (Arrow tables of `self.layout`) in one transaction; durable on return."""
        rows = pa.concat_tables(tables) if len(tables) > 1 else tables[0] if tables else None
        if rows is None or rows.num_rows == 0:
            return
        with self._lock:
            first = self._next_seq
            # Scanned by name: DuckDB's replacement scan finds this local Arrow table
            # (cheaper than register/unregister, about 0.5 ms of a 4-5 ms small commit).
            incoming_rows = rows.append_column("seq", pa.array(range(first, first + rows.num_rows), pa.int64()))
            windows = sorted(pc.unique(incoming_rows.column("window_start")).to_pylist())
            con = cast(duckdb.DuckDBPyConnection, self._con)
            for attempt in range(2):
                try:
                    # One call for the whole transaction: under load the event loop
                    # holds the GIL, and each DuckDB call from this writer thread
                    # waits for it again (DuckDB's Python client also retakes it
                    # between execution tasks), so fewer calls mean shorter commits.
                    con.execute(self._commit_script(windows, create=attempt > 0))
                    break
                except BaseException as exc:
                    with contextlib.suppress(duckdb.Error):  # the failed statement may have ended it
                        con.execute("ROLLBACK")
                    if attempt > 0 or not isinstance(exc, duckdb.CatalogException):
                        raise
                    # A log table this store created was dropped behind its back: create it again.
                    self._logged.clear()
            self._logged.update(windows)
            self._next_seq = first + rows.num_rows

    def _commit_script(self, windows: Sequence[int], *, create: bool) -> str:
        """BEGIN, the events insert, each window's session-log insert, COMMIT: over `incoming_rows`.

        Every statement costs DuckDB a fixed ~0.3 ms however few the rows, so the
        log table's CREATE is sent only while a window may lack one, and the
        window filter only when the rows span several windows.
        """
        columns = ", ".join(
            ["seq", "window_start", "hour", "session", "app", "action", "country"]
            + [attribute_column(a) for a in self._attrs]
        )
        script = ["BEGIN", f"INSERT INTO events ({columns}) SELECT {columns} FROM incoming_rows"]
        for window in windows:
            name = session_log_table(window)
            if create or window not in self._logged:
                script.append(
                    f"""
                    CREATE TABLE IF NOT EXISTS {name} (
                        session BIGINT NOT NULL,
                        app VARCHAR NOT NULL,
                        seq BIGINT NOT NULL,
                        minute SMALLINT NOT NULL
                    )
                    """
                )
            where = f" WHERE window_start = {int(window)}" if len(windows) > 1 else ""
            script.append(f"INSERT INTO {name} SELECT session, app, seq, minute FROM incoming_rows{where}")
        script.append("COMMIT")
        return ";\n".join(script)

    def drop_session_state(self, tx: duckdb.DuckDBPyConnection, window_start: int) -> None:
        """Drop a window's session state, folded and logged, inside the caller's transaction (export)."""
        tx.execute(f"DROP TABLE IF EXISTS {session_table(window_start)}")
        tx.execute(f"DROP TABLE IF EXISTS {session_log_table(window_start)}")
        self._logged.discard(window_start)

    def fold_sessions(self) -> int:
        """Fold every window's logged session rows into its per-session state; return the rows folded.

        Commits only append (a per-commit aggregate or keyed upsert was most of
        a commit's cost, and the aggregate left memory behind in DuckDB's
        allocator); this pass keeps the stored state to what the privacy
        filter allows: a session's first and last minute and its order of
        first use per app, not every event's minute.
        """
        folded = 0
        for window in session_tables(self.cursor()):
            state, log = session_table(window), session_log_table(window)
            with self.transaction() as tx:
                if not _tables_of(tx, window)[1]:
                    continue
                tx.execute(
                    f"""
                    CREATE TABLE IF NOT EXISTS {state} (
                        session BIGINT NOT NULL,
                        app VARCHAR NOT NULL,
                        first_seq BIGINT NOT NULL,
                        first_minute SMALLINT NOT NULL,
                        last_minute SMALLINT NOT NULL,
                        PRIMARY KEY (session, app)
                    )
                    """
                )
                folded += int(tx.execute(f"SELECT count(*) FROM {log}").fetchall()[0][0])
                tx.execute(
                    f"""
                    INSERT INTO {state}
                    SELECT session, app, min(seq), min(minute), max(minute) FROM {log} GROUP BY session, app
                    ON CONFLICT (session, app) DO UPDATE SET
                        first_seq = least({state}.first_seq, excluded.first_seq),
                        first_minute = least({state}.first_minute, excluded.first_minute),
                        last_minute = greatest({state}.last_minute, excluded.last_minute)
                    """
                )
                tx.execute(f"DROP TABLE {log}")
                self._logged.discard(window)
        return folded

    # ---- reads -----------------------------------------------------------------

    def row_count(self) -> int:
        return int(self.cursor().execute("SELECT count(*) FROM events").fetchall()[0][0])

    def size_bytes(self) -> int:
        """Bytes on disk of the database and its write-ahead log."""
        total = 0
        for p in (self.path, self.path.with_name(self.path.name + ".wal")):
            try:
                total += p.stat().st_size
            except FileNotFoundError:
                pass
        return total
