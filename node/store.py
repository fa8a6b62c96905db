"""The node's DuckDB store: schema and migrations, staging, hour-truncated rows, session state, retention.

Tables (times are unix seconds, UTC; nothing finer than an hour except the
per-session minutes, which live only until the window is exported):
    (stages)      rows as filtered (minute included), appended by the writer to one
                  of two stage files beside the store (`stage_path`, node/stagelog.py)
                  and moved from there by `drain`: into `events` and the session log,
                  then emptied; so an event's minute is kept there only until the next drain
    events        one row per accepted event: window, hour, session hash, app,
                  action, country and one `a_<attribute>` column per declared attribute
    sessions_<w>  per (session, app) of window w: order of first use (first_seq) and
                  the first/last minute inside the window, for durations and tool pairs
    session_log_<w>  the (session, app, seq, minute) of each event drained since
                  the last fold: appended by every drain (no aggregate or upsert)
    session_folding_<w>  the log while `fold_sessions` merges it into sessions_<w>
                  (every export pass, 60 s by default, after a drain), a range of
                  sessions at a time; dropped when the pass is through
    All three are dropped at export.
    snapshots, ledger, outbox, node_state   see node/export.py and node/outbox.py
Only the writer task stages rows, and it never touches DuckDB; drains and the
export pass take the store's write lock; readers use their own cursor.
Deleting a row or dropping a table frees its blocks without overwriting them:
after a retention delete or a drop of session state the export pass rewrites
the file (`compact`, node/compaction.py), so what was deleted leaves the disk's file.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from itertools import chain
from pathlib import Path
from typing import Any, cast

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from node.compaction import GatedCursor, ReaderGate, remove_leftovers, rewrite
from node.dimensions import dimension_domains, fit_dimensions
from node.privacy import FilteredEvent
from node.rows import RowLayout, attribute_field
from node.stagelog import StageFile
from protocol.catalog import Catalog
from protocol.files import make_private_dir, make_private_files
from runtime.storage import Database

Migration = Callable[[duckdb.DuckDBPyConnection], None]


def _v1(con: duckdb.DuckDBPyConnection) -> None:
    """Schema v1: raw events, published snapshots, the privacy ledger, the push outbox, named values."""
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


SESSION_STATE_COLUMNS = """
    session BIGINT NOT NULL,
    app VARCHAR NOT NULL,
    first_seq BIGINT NOT NULL,
    first_minute SMALLINT NOT NULL,
    last_minute SMALLINT NOT NULL
"""
"""A window's per-session state (`session_table`): one row per (session, app), kept so by the fold, not by a key."""


MIGRATIONS: tuple[Migration, ...] = (_v1,)
"""Schema migrations in order; the schema version is their count."""


def stage_path(path: Path, index: int) -> Path:
    """One of a store's two stage files, beside the store's own."""
    return path.with_name(f"{path.stem}.stage{index}.log")


def session_table(window_start: int) -> str:
    """The folded per-session state of one window lives in its own table, dropped whole at export.

    (A DELETE of a day's million session rows from one shared indexed table
    takes seconds; DROP TABLE takes none.)
    """
    return f"sessions_{int(window_start)}"


def session_log_table(window_start: int) -> str:
    """The per-event session rows of one window not folded yet."""
    return f"session_log_{int(window_start)}"


def session_folding_table(window_start: int) -> str:
    """A window's session log while a fold pass works through it (the drains start a new log meanwhile)."""
    return f"session_folding_{int(window_start)}"


_SESSION_TABLE_KINDS = (session_table, session_folding_table, session_log_table)


def session_tables(con: duckdb.DuckDBPyConnection) -> list[int]:
    """Windows that still have per-session state, folded or not."""
    rows = con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE table_name LIKE 'sessions\\_%' ESCAPE '\\' "
        "OR table_name LIKE 'session\\_log\\_%' ESCAPE '\\' OR table_name LIKE 'session\\_folding\\_%' ESCAPE '\\'"
    ).fetchall()
    return sorted({int(name.rsplit("_", 1)[1]) for (name,) in rows})


def _tables_of(con: duckdb.DuckDBPyConnection, window_start: int) -> list[str]:
    """Which of a window's session tables exist: its state, the log being folded, the log."""
    names = {name for (name,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    return [table for kind in _SESSION_TABLE_KINDS if (table := kind(window_start)) in names]


ERASE_PENDING = "erase_pending"
"""The `node_state` mark of rows deleted (or session state dropped) that the file still holds in freed blocks."""


def _erase_pending(tx: duckdb.DuckDBPyConnection) -> None:
    # In the deleting transaction: a crash before the rewrite leaves the mark, and the next pass rewrites.
    tx.execute(f"INSERT INTO node_state VALUES ('{ERASE_PENDING}', 1) ON CONFLICT (name) DO UPDATE SET value = 1")


def session_state(con: duckdb.DuckDBPyConnection, window_start: int) -> str:
    """SQL of one window's session state, one row per (session, app): folded rows plus unfolded events.

    The fold takes the earliest first use and the widest span of minutes,
    which is what `fold_sessions` keeps; so a session folded in part (a pass
    between steps) or not at all counts the same.
    """
    parts = ["SELECT 0::BIGINT AS session, '' AS app, 0::BIGINT AS first_seq, 0::SMALLINT AS first_minute, "
             "0::SMALLINT AS last_minute WHERE false"]
    for table in _tables_of(con, window_start):
        if table == session_table(window_start):
            parts.append(f"SELECT session, app, first_seq, first_minute, last_minute FROM {table}")
        else:
            parts.append(f"SELECT session, app, seq, minute, minute FROM {table}")
    return (
        "SELECT session, app, min(first_seq) AS first_seq, min(first_minute) AS first_minute, "
        f"max(last_minute) AS last_minute FROM ({' UNION ALL '.join(parts)}) GROUP BY session, app"
    )


ROW_GROUP_ROWS = 16_384
"""Rows per DuckDB row group in the store (DuckDB's default is 122,880), and per slice of a drain.

DuckDB compresses and writes a full row group to the file in one go: about
40 ms of CPU for 122,880 rows here. With row groups of 16,384 rows each
slice of a drain (its events, its session rows) costs about 15 ms, and a
paced drain leaves the cores to requests between slices. Bursts of 100 ms
of CPU, not their total, are what put requests over 50 ms at half the
maximum rate: beside a node with drains held off, a CPU hog doing 150 ms
every 1.25 s raised the p99 from 10-19 to 27-58 ms (31-39 at nice 19), the
same CPU in 15 ms slices to 13-17 ms (docs/benchmarks.md at 21733bb). The
cost: about 30% more CPU for a drain's inserts, and a file about 20% bigger.
"""
STORE_CATALOG = "node_store"
PACE = 2.0
"""A paced drain or fold rests this many times each slice's (step's) wall time after it: at most a third of a core."""
FOLD_STEP_ROWS = 262_144
"""Session log rows per step of a fold, about: a step merges one range of session hashes.

In one statement, the fold of a minute's log at 93,000 events/s (5.6 M rows,
1.1 M new sessions) took 1.1-1.7 s on a live node, on both cores, and
requests waited behind it (docs/benchmarks.md at 09b27bc). Each step scans
the whole log for its range (about 8 ms per 5.6 M rows) and groups and merges
its share: 32 steps of such a log cost 33-42 ms of one core each in a scratch
database, 1.2 s in all, against 0.7 s in one statement.
"""


def fold_steps(rows: int, step_rows: int = FOLD_STEP_ROWS) -> int:
    """Steps of a fold of `rows` log rows: a power of two, so the session ranges split BIGINT evenly."""
    steps = 1
    while steps * step_rows < rows and steps < 1024:
        steps *= 2
    return steps


def attach_store(con: duckdb.DuckDBPyConnection, path: Path, name: str) -> None:
    """Attach a store file as `name`, with the store's row group size (DuckDB does not keep it in the file)."""
    quoted = str(path).replace("'", "''")
    con.execute(f"ATTACH '{quoted}' AS {name} (ROW_GROUP_SIZE {ROW_GROUP_ROWS})")


def connect_store(path: Path) -> duckdb.DuckDBPyConnection:
    """A connection to the store file, attached as `STORE_CATALOG` and in use."""
    con = duckdb.connect()
    quoted = str(path).replace("'", "''")
    # Where a file database of its own would spill. Made here, 0700: spilled rows are raw rows, and
    # DuckDB would create it with the umask's mode (it leaves a directory it did not create in place).
    make_private_dir(temp_directory(path))
    con.execute(f"SET temp_directory = '{quoted}.tmp'")  # temp_directory(path)
    attach_store(con, path, STORE_CATALOG)
    con.execute(f"USE {STORE_CATALOG}")
    # Each full row group of a big insert goes to the file as it fills, within its slice,
    # instead of five at a time (DuckDB's default), which would land in one burst.
    con.execute("SET write_buffer_row_group_count = 1")
    return con


def temp_directory(path: Path) -> Path:
    """Where DuckDB spills for the store at `path`."""
    return path.with_name(path.name + ".tmp")


def wal_path(path: Path) -> Path:
    """DuckDB's write-ahead log of the database file at `path`."""
    return path.with_name(path.name + ".wal")


def attribute_column(name: str) -> str:
    """Column of a declared attribute; names are catalog slugs, so quoting is safe."""
    return f'"{attribute_field(name)}"'


class Store(Database):
    """Owns the files of one node: the DuckDB store and its two stage files.

    Acks wait on an append to a *stage file* (node/stagelog.py), never on
    DuckDB: a DuckDB commit of a few hundred rows costs 1.5-2.7 ms of CPU, and
    it checkpoints its WAL into the file every 16 MB (55-190 ms here), holding
    every queued request meanwhile. The writer appends each group to the
    active stage; `drain` swaps stages and moves the full one into `events`
    and the session logs in one DuckDB transaction, off the ack path, a row
    group (`ROW_GROUP_ROWS`) at a time.
    """

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
        self._domains = dimension_domains(catalog)
        with self.transaction() as tx:
            fit_dimensions(tx, self._domains)
        # `_stage_lock` orders the writer's appends against a drain's swap;
        # `_drain_lock` keeps drains one at a time.
        self._stage_lock = threading.Lock()
        self._drain_lock = threading.Lock()
        self._stages = tuple(StageFile(stage_path(path, i), self.layout.schema) for i in range(2))
        # Each stage holds one run of seqs, `_first[i]` .. `_first[i] + _staged[i] - 1`:
        # a stage takes appends only from empty until it is drained.
        self._first = [0, 0]
        self._staged = [0, 0]
        self._active = 0
        # The drained mark: every row at or below it is in `events` (see `_move`).
        self._con.execute("INSERT INTO node_state VALUES ('drained_seq', 0) ON CONFLICT (name) DO NOTHING")
        # Rows left staged by a crash move first.
        self._move([0, 1])
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
        """Append filtered rows (Arrow tables of `self.layout`) to the active stage file; durable on return."""
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
    def staged_rows(self) -> int:
        """Rows appended to the stages and not drained yet."""
        return sum(self._staged)

    def drain(self, *, pace_below: int | None = None) -> int:
        """Move every row staged before this call into `events` and the session logs; return how many.

        A stage left full by a failed drain goes first (its rows are older);
        then the stages swap and the one the writer was filling moves.
        `pace_below`: rest between slices (`PACE`) while the stage the
        writer fills holds fewer rows than this (the next drain is not due):
        for drains that run beside live requests. At a rate paced drains
        cannot follow they go at full speed, so the stages stay bounded.
        """
        with self._drain_lock:
            moved = 0
            with self._stage_lock:
                idle = 1 - self._active
                leftover = self._staged[idle] > 0
            if leftover:
                moved += self._move([idle], pace_below=pace_below)
                self._clear(idle)
            with self._stage_lock:
                if self._staged[self._active] == 0:
                    return moved
                full, self._active = self._active, 1 - self._active
            moved += self._move([full], pace_below=pace_below)
            self._clear(full)
            return moved

    def _drained_seq(self) -> int:
        return int(self.cursor().execute("SELECT value FROM node_state WHERE name = 'drained_seq'").fetchall()[0][0])

    def _staged_table(self, indices: Sequence[int]) -> pa.Table | None:
        """The rows of the given stage files, numbered (a `seq` column first): as held in memory, else read back from disk."""
        tables = []
        for index in indices:
            with self._stage_lock:
                first, count = self._first[index], self._staged[index]
            held = self._stages[index].held()
            if held is not None and held.num_rows == count:
                # A stage holds one run of seqs from `first` (see `__init__`).
                if count:
                    tables.append(held.add_column(0, "seq", pa.array(np.arange(first, first + count, dtype=np.int64))))
                continue
            records = self._stages[index].records()
            if records:
                # One table per file, not per record: a file of one-row records (light
                # single-event traffic) holds tens of thousands of them.
                seq = chain.from_iterable(range(first, first + batch.num_rows) for first, batch in records)
                table = pa.Table.from_batches([batch for _, batch in records])
                tables.append(table.add_column(0, "seq", pa.array(list(seq), pa.int64())))
        if not tables:
            return None
        # A stage written before the catalog changed lacks (or has extra) attribute columns.
        # Left in chunks: a drain combines a slice at a time, not a 20 MB copy at once.
        return pa.concat_tables(tables, promote_options="default")

    def _move(self, indices: Sequence[int], *, pace_below: int | None = None) -> int:
        """Copy staged rows past the drained mark into the store, and raise the mark, in one transaction.

        The mark makes a drain idempotent: a crash between this commit and
        emptying the stage moves nothing twice. Stages fill and drain in seq
        order, so every row at or below the mark is in `events`.
        """
        staged = self._staged_table(indices)
        moved = 0 if staged is None else self._move_rows(staged, pace_below=pace_below)
        del staged
        # Arrow's allocator keeps freed blocks for reuse: a drain's copy of a stage would stay in the RSS.
        pa.default_memory_pool().release_unused()
        return moved

    def _move_rows(self, staged: pa.Table, *, pace_below: int | None = None) -> int:
        try:
            return self._insert_moving(staged, pace_below=pace_below)
        except duckdb.ConversionException:
            # A value outside a column's ENUM: rows staged under a catalog since changed.
            # Widen the column, then move them.
            with self.transaction() as tx:
                if not fit_dimensions(tx, self._domains, staged):
                    raise
            return self._insert_moving(staged, pace_below=pace_below)

    def _insert_moving(self, staged: pa.Table, *, pace_below: int | None) -> int:
        # The store's columns: the layout's and `seq`. `minute` stays out of `events`, and so does
        # an attribute the catalog dropped since the rows were staged.
        known = {"seq", *self.layout.schema.names} - {"minute"}
        with self.transaction() as tx:
            mark = self._drained_seq()
            lowest, top = (int(v.as_py()) for v in pc.min_max(staged.column("seq")).values())
            if top <= mark:
                return 0
            # Rows at or below the mark are there only after a crash between a move and its emptying.
            moving = staged if lowest > mark else staged.filter(pc.greater(staged.column("seq"), mark))
            columns = ", ".join(f'"{c}"' for c in moving.column_names if c in known)
            windows = sorted(pc.unique(moving.column("window_start")).to_pylist())
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
            # A row group at a time: each slice's compression and write is one short burst of CPU.
            for offset in range(0, moving.num_rows, ROW_GROUP_ROWS):
                started = time.perf_counter()
                tx.register("moving_rows", moving.slice(offset, ROW_GROUP_ROWS).combine_chunks())
                try:
                    script = [f"INSERT INTO events ({columns}) SELECT {columns} FROM moving_rows"]
                    script += [
                        f"INSERT INTO {session_log_table(window)} SELECT session, app, seq, minute "
                        f"FROM moving_rows WHERE window_start = {int(window)}"
                        for window in windows
                    ]
                    tx.execute(";\n".join(script))
                finally:
                    # In an aborted transaction this fails; the rollback drops the view anyway.
                    with suppress(duckdb.TransactionException):
                        tx.unregister("moving_rows")
                # Read without the stage lock (the writer holds it through its fdatasync):
                # a stale count only decides one rest.
                ahead = pace_below is not None and self._staged[self._active] < pace_below
                if ahead and offset + ROW_GROUP_ROWS < moving.num_rows:
                    time.sleep(PACE * (time.perf_counter() - started))
            tx.execute(f"UPDATE node_state SET value = {top} WHERE name = 'drained_seq'")
        return int(moving.num_rows)

    def _clear(self, index: int) -> None:
        """Empty a drained stage file, off the ack path."""
        self._stages[index].reset()
        with self._stage_lock:
            self._staged[index] = 0

    def drop_session_state(self, tx: duckdb.DuckDBPyConnection, window_start: int) -> None:
        """Drop a window's session state, folded and logged, inside the caller's transaction (export)."""
        tables = _tables_of(tx, window_start)
        for table in tables:
            tx.execute(f"DROP TABLE {table}")
        if tables:
            _erase_pending(tx)

    def delete_rows(self, tx: duckdb.DuckDBPyConnection, *, until: int) -> int:
        """Delete the raw rows of every window starting at or before `until`, inside the caller's transaction (retention)."""
        deleted = int(tx.execute("DELETE FROM events WHERE window_start <= ?", [until]).fetchall()[0][0])
        if deleted:
            _erase_pending(tx)
        return deleted

    def erase_pending(self) -> bool:
        """Whether rows were deleted or session state dropped since the file was last rewritten (`compact`)."""
        rows = self.cursor().execute(f"SELECT value FROM node_state WHERE name = '{ERASE_PENDING}'").fetchall()
        return bool(rows and rows[0][0])

    def compact(self) -> None:
        """Rewrite the file with live rows only, so deleted rows and dropped state leave the disk (node/compaction.py).

        Drains and writes wait meanwhile (acks do not: they wait on the stage
        files); readers go on until the swap, then wait for it. DuckDB runs it
        on one thread, so the other core stays with requests (`_one_thread`).
        """
        with self._one_thread(), self._drain_lock, self._lock:
            con = cast(duckdb.DuckDBPyConnection, self._con)
            rewrite(con, self.path, catalog=STORE_CATALOG, attach=attach_store, gate=self._gate, forget=ERASE_PENDING)
        make_private_files(self.path)

    def fold_sessions(self, *, pace: bool = False, step_rows: int = FOLD_STEP_ROWS) -> int:
        """Fold every window's logged session rows into its per-session state; return the rows folded.

        Drains only append (a per-commit aggregate or keyed upsert was most of
        a commit's cost, and the aggregate left memory behind in DuckDB's
        allocator); this pass keeps the stored state to what the privacy
        filter allows: a session's first and last minute and its order of
        first use per app, not every event's minute.
        Each log is merged a range of session hashes at a time, about
        `step_rows` of its rows a step (see `FOLD_STEP_ROWS`); `pace`: rest
        `PACE` times each step's wall time after it, for a pass that runs
        beside live requests.
        """
        folded = 0
        with self._one_thread() if pace else nullcontext():
            for window in session_tables(self.cursor()):
                # At most twice: a log an interrupted pass left, then the log as of now
                # (the drains start a new one during the pass, for the next pass).
                for _ in range(2):
                    if not self._start_fold(window):
                        break
                    folded += self._fold_window(window, pace=pace, step_rows=step_rows)
        return folded

    @contextmanager
    def _one_thread(self) -> Iterator[None]:
        """DuckDB on one thread meanwhile (a global setting: drains between fold steps too).

        The other core stays with requests: at 93,000 events/s, a p99 of
        27-35 ms while a paced fold ran on one thread, 41-44 ms on two.
        """
        with self.transaction() as tx:
            threads = int(tx.execute("SELECT current_setting('threads')").fetchall()[0][0])
            tx.execute("SET threads = 1")
        try:
            yield
        finally:
            with self.transaction() as tx:
                tx.execute(f"SET threads = {threads}")

    def _start_fold(self, window: int) -> bool:
        """Make a window's log the one being folded, unless a pass left one: whether there is one to fold."""
        with self.transaction() as tx:
            present = _tables_of(tx, window)
            if session_folding_table(window) in present:
                return True
            if session_log_table(window) not in present:
                return False
            tx.execute(f"ALTER TABLE {session_log_table(window)} RENAME TO {session_folding_table(window)}")
            return True

    def _fold_window(self, window: int, *, pace: bool, step_rows: int) -> int:
        """Merge a window's folding log into its state one session range at a time, then drop it."""
        state, folding = session_table(window), session_folding_table(window)
        with self.transaction() as tx:
            tx.execute(f"CREATE TABLE IF NOT EXISTS {state} ({SESSION_STATE_COLUMNS})")
            rows = int(tx.execute(f"SELECT count(*) FROM {folding}").fetchall()[0][0])
        steps = fold_steps(rows, step_rows)
        width = 2**64 // steps
        for step in range(steps):
            # Session hashes are uniform over BIGINT, so each range holds about rows / steps.
            low = -(2**63) + step * width
            high = low + width - 1
            with self.transaction() as tx:
                started = time.perf_counter()  # once the write lock is ours: a drain's turn is not this step's cost
                # A hash join of the range's groups against the state, not an upsert on a
                # primary key (an index insert per new session cost 4x the CPU and 8x the
                # file). The join's key range, pushed into the state's scan, skips row groups:
                # each step appends one range's new sessions, so the state's row groups stay
                # narrow in session and a step's cost does not grow with the state.
                # The groups are unique, so the state keeps one row per (session, app).
                tx.execute(
                    f"""
                    MERGE INTO {state} USING (
                        SELECT session, app, min(seq) AS first_seq, min(minute) AS first_minute,
                               max(minute) AS last_minute
                        FROM {folding} WHERE session BETWEEN {low} AND {high} GROUP BY session, app
                    ) AS logged
                    ON {state}.session = logged.session AND {state}.app = logged.app
                    WHEN MATCHED THEN UPDATE SET
                        first_seq = least({state}.first_seq, logged.first_seq),
                        first_minute = least({state}.first_minute, logged.first_minute),
                        last_minute = greatest({state}.last_minute, logged.last_minute)
                    WHEN NOT MATCHED THEN INSERT
                        VALUES (logged.session, logged.app, logged.first_seq, logged.first_minute, logged.last_minute)
                    """
                )
            if pace and step + 1 < steps:
                time.sleep(PACE * (time.perf_counter() - started))
        # Merging is idempotent (least, greatest): a crash before this drop folds the log again, to the same state.
        with self.transaction() as tx:
            tx.execute(f"DROP TABLE {folding}")
        return rows

    def close(self) -> None:
        """Drain what is staged (so the store file stands alone), then close."""
        try:
            self.drain()
        except duckdb.Error:
            pass  # the rows stay staged, durable, and move at the next open
        for stage in self._stages:
            stage.close()
        super().close()

    # ---- reads -----------------------------------------------------------------

    def cursor(self) -> Any:
        """A reader cursor whose queries wait while `compact` swaps the file (between them, never during one)."""
        with self._gate.reading():
            return GatedCursor(super().cursor(), self._gate)

    def row_count(self) -> int:
        """Events stored, staged ones included (each once, also while a drain is between its two steps)."""
        with self._stage_lock:
            runs = list(zip(self._first, self._staged, strict=False))
        # Read after the runs: a row moved since is at or below this mark, and counted in `events`.
        stored, mark = self.cursor().execute(
            "SELECT (SELECT count(*) FROM events), "
            "(SELECT coalesce(max(value), 0) FROM node_state WHERE name = 'drained_seq')"
        ).fetchall()[0]
        return int(stored) + sum(max(0, min(rows, first + rows - 1 - int(mark))) for first, rows in runs)

    def size_bytes(self) -> int:
        """Bytes on disk of the store's database, its write-ahead log and the stage files."""
        total = sum(stage.size_bytes() for stage in self._stages)
        for p in (self.path, wal_path(self.path)):
            try:
                total += p.stat().st_size
            except FileNotFoundError:
                pass
        return total
