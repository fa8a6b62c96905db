"""The node store's schema: its tables, their names per window, and how the file is opened.

Tables (times are unix seconds, UTC; nothing finer than an hour except the
per-session minutes, which live only until the window is exported):
    events        one row per accepted event: window, hour, session hash, app,
                  action, country and one `a_<attribute>` column per declared attribute
    sessions_<w>  per (session, app) of window w: order of first use (first_seq) and
                  the first/last minute inside the window, for durations and tool pairs
    session_log_<w>  the (session, app, seq, minute) of each event drained since
                  the last fold (node/sessionfold.py)
    session_folding_<w>  the log while a fold merges it into sessions_<w>
    All three are dropped at export.
    snapshots, ledger, outbox, node_state   see node/export.py and node/outbox.py
Rows as filtered (minute included) wait in two stage files beside the store
(node/staging.py) until a drain moves them into `events` and the session log.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import duckdb

from node.rows import attribute_field
from protocol.files import make_private_dir

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


ROW_GROUP_ROWS = 16_384
"""Rows per DuckDB row group in the store (DuckDB's default is 122,880), and per slice of a drain.

A full row group is compressed and written in one burst of CPU; at this size
a drain's slice costs about 15 ms, so requests never wait behind one for long
(docs/benchmarks.md, ingest). The cost: more CPU per insert and a bigger file.
"""
STORE_CATALOG = "node_store"
"""The name the store file is attached under."""


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


def tables_of(con: duckdb.DuckDBPyConnection, window_start: int) -> list[str]:
    """Which of a window's session tables exist: its state, the log being folded, the log."""
    names = {name for (name,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    return [table for kind in _SESSION_TABLE_KINDS if (table := kind(window_start)) in names]


ERASE_PENDING = "erase_pending"
"""The `node_state` mark of rows deleted (or session state dropped) that the file still holds in freed blocks."""


def mark_erase_pending(tx: duckdb.DuckDBPyConnection) -> None:
    """Note in the deleting transaction that the file holds freed rows: a crash before the rewrite keeps the note."""
    tx.execute(f"INSERT INTO node_state VALUES ('{ERASE_PENDING}', 1) ON CONFLICT (name) DO UPDATE SET value = 1")


def session_state(con: duckdb.DuckDBPyConnection, window_start: int) -> str:
    """SQL of one window's session state, one row per (session, app): folded rows plus unfolded events.

    The fold takes the earliest first use and the widest span of minutes,
    which is what `fold_sessions` keeps; so a session folded in part (a pass
    between steps) or not at all counts the same.
    """
    parts = ["SELECT 0::BIGINT AS session, '' AS app, 0::BIGINT AS first_seq, 0::SMALLINT AS first_minute, "
             "0::SMALLINT AS last_minute WHERE false"]
    for table in tables_of(con, window_start):
        if table == session_table(window_start):
            parts.append(f"SELECT session, app, first_seq, first_minute, last_minute FROM {table}")
        else:
            parts.append(f"SELECT session, app, seq, minute, minute FROM {table}")
    return (
        "SELECT session, app, min(first_seq) AS first_seq, min(first_minute) AS first_minute, "
        f"max(last_minute) AS last_minute FROM ({' UNION ALL '.join(parts)}) GROUP BY session, app"
    )


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
