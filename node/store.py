"""The node's DuckDB store: schema and migrations, staging, hour-truncated rows, session state, retention.

Tables (times are unix seconds, UTC; nothing finer than an hour except the
per-session minutes, which live only until the window is exported):
    <stage>.staged  rows as filtered (minute included), committed by the writer to
                  one of two staging databases beside the store (`stage_path`) and
                  moved from there by `drain`: into `events` and the session log, then
                  deleted; so an event's minute is kept only until the next pass
    events        one row per accepted event: window, hour, session hash, app,
                  action, country and one `a_<attribute>` column per declared attribute
    sessions_<w>  per (session, app) of window w: order of first use (first_seq) and
                  the first/last minute inside the window, for durations and tool pairs
    session_log_<w>  the (session, app, seq, minute) of each event drained since
                  the last fold: appended by every drain (no aggregate or upsert),
                  folded into sessions_<w> by `fold_sessions` on every export pass
                  (60 s by default, after a drain) and dropped
    Both are dropped at export.
    snapshots, ledger, outbox, node_state   see node/export.py and node/outbox.py
Only the writer task stages rows; drains and the export pass take the store's
write lock; readers use their own cursor.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import duckdb
import pyarrow as pa

from node.privacy import FilteredEvent
from node.rows import RowLayout
from protocol.catalog import Catalog
from protocol.storage import Database

Migration = Callable[[duckdb.DuckDBPyConnection], None]

_STAGE_COLUMNS = (
    "window_start BIGINT NOT NULL, hour BIGINT NOT NULL, session BIGINT NOT NULL, app VARCHAR NOT NULL, "
    "action VARCHAR NOT NULL, country VARCHAR NOT NULL, minute SMALLINT NOT NULL"
)
"""A stage's columns before the attributes (`RowLayout`'s): a row as filtered, minute included."""


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


def stage_path(path: Path, index: int) -> Path:
    """The file of one of a store's two staging databases, beside the store's own."""
    return path.with_name(f"{path.stem}.stage{index}{path.suffix}")


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
    """Owns the DuckDB files of one node: the store itself and its two staging files.

    Acks wait on a commit to a *staging* database, never on the store's own
    tables. DuckDB checkpoints a database's WAL into its file every 16 MB,
    and a commit waiting on that (55-190 ms here) held every queued request.
    The writer commits each group to the active stage, one statement; `drain`
    swaps stages and moves the full one into `events` and the session logs,
    off the ack path, where the store's checkpoints now fall. Each file
    checkpoints on its own, so the writer never waits for another's.
    """

    def __init__(self, path: Path, catalog: Catalog, *, memory_limit: str = "640MB") -> None:
        self.path = path
        self.catalog = catalog
        path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(duckdb.connect(str(path)), MIGRATIONS, memory_limit=memory_limit)
        self.layout = RowLayout(catalog)
        self._attrs = self.layout.attributes
        # Stages are written by the writer's connection only; `_stage_lock` orders
        # its inserts against a drain's swap, `_drain_lock` keeps drains one at a time.
        self._stage_lock = threading.Lock()
        self._drain_lock = threading.Lock()
        self._stages = tuple(f"liberation_stage_{i}" for i in range(2))
        for i, stage in enumerate(self._stages):
            self._con.execute(f"ATTACH '{stage_path(path, i)}' AS {stage}")
            self._con.execute(f"CREATE TABLE IF NOT EXISTS {stage}.staged (seq BIGINT NOT NULL, {_STAGE_COLUMNS})")
        # The catalog may declare new attributes: each gets a nullable column.
        for table in ["events"] + [f"{stage}.staged" for stage in self._stages]:
            for name in self._attrs:
                self._con.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {attribute_column(name)} VARCHAR")
        self._writer = self._con.cursor()
        self._drainer = self._con.cursor()
        # Rows left staged by a crash: moved before anything else is written.
        self._staged = [0, 0]
        self._active = 0
        self._move(list(self._stages))
        for index in range(len(self._stages)):
            self._clear(index)
        self._next_seq = self._drained_seq() + 1

    # ---- writes ------------------------------------------------------------------

    def commit_events(self, events: Sequence[FilteredEvent]) -> None:
        """Store events and their session state; durable and in `events` on return (import, tests)."""
        if events:
            self.commit_rows([self.layout.table([self.layout.block(events)])])

    def commit_rows(self, tables: Sequence[pa.Table]) -> None:
        """Stage rows and drain them: durable and in `events` on return."""
        self.stage_rows(tables)
        self.drain()

    def stage_rows(self, tables: Sequence[pa.Table]) -> None:
        """Commit filtered rows (Arrow tables of `self.layout`) to the active stage; durable on return.

        One statement, no BEGIN/COMMIT: DuckDB costs ~0.3 ms per statement here
        however few the rows, and a single insert is its own transaction.
        """
        rows = pa.concat_tables(tables) if len(tables) > 1 else tables[0] if tables else None
        if rows is None or rows.num_rows == 0:
            return
        with self._stage_lock:
            first = self._next_seq
            # Scanned by name: DuckDB's replacement scan finds this local Arrow table.
            incoming_rows = rows.append_column("seq", pa.array(range(first, first + rows.num_rows), pa.int64()))
            self._writer.execute(f"INSERT INTO {self._stages[self._active]}.staged BY NAME SELECT * FROM incoming_rows")
            self._next_seq = first + rows.num_rows
            self._staged[self._active] += rows.num_rows

    @property
    def staged_rows(self) -> int:
        """Rows committed to the stages and not drained yet."""
        return sum(self._staged)

    def drain(self) -> int:
        """Move every row staged before this call into `events` and the session logs; return how many.

        A stage left full by a failed drain goes first (its rows are older);
        then the stages swap and the one the writer was filling moves.
        """
        with self._drain_lock:
            moved = 0
            with self._stage_lock:
                idle = 1 - self._active
                leftover = self._staged[idle] > 0
            if leftover:
                moved += self._move([self._stages[idle]])
                self._clear(idle)
            with self._stage_lock:
                if self._staged[self._active] == 0:
                    return moved
                full, self._active = self._active, 1 - self._active
            moved += self._move([self._stages[full]])
            self._clear(full)
            return moved

    def _drained_seq(self) -> int:
        rows = self.cursor().execute("SELECT value FROM node_state WHERE name = 'drained_seq'").fetchall()
        if rows:
            return int(rows[0][0])
        # A store from before staging: every row it has is in `events`.
        return int(self.cursor().execute("SELECT coalesce(max(seq), 0) FROM events").fetchall()[0][0])

    def _move(self, stages: Sequence[str]) -> int:
        """Copy staged rows past the drained mark into the store, and raise the mark, in one transaction.

        The mark makes a drain idempotent: a crash between this commit and
        clearing the stage moves nothing twice. Stages fill and drain in seq
        order, so every row at or below the mark is in `events`.
        """
        source = " UNION ALL BY NAME ".join(f"SELECT * FROM {stage}.staged" for stage in stages)
        columns = ", ".join(
            ["seq", "window_start", "hour", "session", "app", "action", "country"]
            + [attribute_column(a) for a in self._attrs]
        )
        with self.transaction() as tx:
            mark = self._drained_seq()
            moving = f"({source}) WHERE seq > {mark}"
            moved, top, windows = tx.execute(
                f"SELECT count(*), coalesce(max(seq), 0), list(DISTINCT window_start) FROM {moving}"
            ).fetchall()[0]
            if not moved:
                return 0
            script = [f"INSERT INTO events ({columns}) SELECT {columns} FROM {moving}"]
            for window in sorted(int(w) for w in windows):
                name = session_log_table(window)
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
                script.append(
                    f"INSERT INTO {name} SELECT session, app, seq, minute FROM ({source}) "
                    f"WHERE seq > {mark} AND window_start = {window}"
                )
            script.append(
                f"INSERT INTO node_state VALUES ('drained_seq', {int(top)}) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value"
            )
            tx.execute(";\n".join(script))
        return int(moved)

    def _clear(self, index: int) -> None:
        """Empty a drained stage and checkpoint its file (its WAL goes), off the ack path."""
        stage = self._stages[index]
        self._drainer.execute(f"DELETE FROM {stage}.staged")
        self._drainer.execute(f"CHECKPOINT {stage}")
        with self._stage_lock:
            self._staged[index] = 0

    def drop_session_state(self, tx: duckdb.DuckDBPyConnection, window_start: int) -> None:
        """Drop a window's session state, folded and logged, inside the caller's transaction (export)."""
        tx.execute(f"DROP TABLE IF EXISTS {session_table(window_start)}")
        tx.execute(f"DROP TABLE IF EXISTS {session_log_table(window_start)}")

    def fold_sessions(self) -> int:
        """Fold every window's logged session rows into its per-session state; return the rows folded.

        Drains only append (a per-commit aggregate or keyed upsert was most of
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
        return folded

    def trim_cache(self, *, keep_bytes: int = 16 * 2**20) -> int:
        # The writer's inserts do not take the store's lock: hold them off while the limit is low.
        with self._stage_lock:
            return super().trim_cache(keep_bytes=keep_bytes)

    def close(self) -> None:
        """Drain what is staged (so the store file stands alone), then close."""
        try:
            self.drain()
        except duckdb.Error:
            pass  # the rows stay staged, durable, and move at the next open
        self._writer.close()
        self._drainer.close()
        super().close()

    # ---- reads -----------------------------------------------------------------

    def row_count(self) -> int:
        """Events stored, staged ones included (each once, also while a drain is between its two steps)."""
        staged = " + ".join(f"(SELECT count(*) FROM {stage}.staged WHERE seq > mark.seq)" for stage in self._stages)
        sql = (
            "SELECT (SELECT count(*) FROM events) + " + staged + " FROM "
            "(SELECT coalesce(max(value), 0) AS seq FROM node_state WHERE name = 'drained_seq') AS mark"
        )
        return int(self.cursor().execute(sql).fetchall()[0][0])

    def size_bytes(self) -> int:
        """Bytes on disk of the store's and the stages' databases and write-ahead logs."""
        total = 0
        for db in (self.path, *(stage_path(self.path, i) for i in range(len(self._stages)))):
            for p in (db, db.with_name(db.name + ".wal")):
                try:
                    total += p.stat().st_size
                except FileNotFoundError:
                    pass
        return total
