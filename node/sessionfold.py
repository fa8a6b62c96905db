"""The session fold: a window's logged session rows merged into its per-session state.

Drains only append to a window's session log (a per-commit aggregate or keyed
upsert was most of a commit's cost); this pass keeps the stored state to what
the privacy filter allows: per (session, app), the order of first use and the
first and last minute inside the window, not every event's minute.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from node.pacing import Rest
from node.schema import (
    SESSION_STATE_COLUMNS,
    mark_erase_pending,
    session_folding_table,
    session_log_table,
    session_table,
    session_tables,
    tables_of,
)
from runtime.storage import Database

FOLD_STEP_ROWS = 262_144
"""Session log rows per step of a fold, about: a step merges one range of session hashes.

A minute's log at a high rate folded in one statement kept both cores for
over a second; in steps, each costs tens of milliseconds of one core
(docs/benchmarks.md, ingest).
"""


def fold_steps(rows: int, step_rows: int = FOLD_STEP_ROWS) -> int:
    """Steps of a fold of `rows` log rows: a power of two, so the session ranges split BIGINT evenly."""
    steps = 1
    while steps * step_rows < rows and steps < 1024:
        steps *= 2
    return steps


class SessionFold:
    """Folds and drops the per-session state of a node store's windows."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def fold(self, *, rest: Rest | None = None, window: int | None = None, step_rows: int = FOLD_STEP_ROWS) -> int:
        """Fold every window's logged session rows (or `window`'s) into its per-session state; the rows folded.

        Each log is merged a range of session hashes at a time, about
        `step_rows` of its rows a step; `rest` (node/pacing.py), if given, is
        called after each step with its wall time, outside any transaction,
        and DuckDB runs on one thread meanwhile.
        """
        folded = 0
        windows = session_tables(self._db.cursor()) if window is None else [window]
        with self.one_thread() if rest is not None else nullcontext():
            for w in windows:
                # At most twice: a log an interrupted pass left, then the log as of now
                # (the drains start a new one during the pass, for the next pass).
                for _ in range(2):
                    if not self._start(w):
                        break
                    folded += self._fold_window(w, rest=rest, step_rows=step_rows)
        return folded

    def drop(self, tx: Any, window_start: int) -> None:
        """Drop a window's session state, folded and logged, inside the caller's transaction (export, expiry)."""
        tables = tables_of(tx, window_start)
        for table in tables:
            tx.execute(f"DROP TABLE {table}")
        if tables:
            mark_erase_pending(tx)

    @contextmanager
    def one_thread(self) -> Iterator[None]:
        """DuckDB on one thread meanwhile (a global setting: drains between fold steps too).

        The other core stays with requests while paced background work runs.
        """
        with self._db.transaction() as tx:
            threads = int(tx.execute("SELECT current_setting('threads')").fetchall()[0][0])
            tx.execute("SET threads = 1")
        try:
            yield
        finally:
            with self._db.transaction() as tx:
                tx.execute(f"SET threads = {threads}")

    def _start(self, window: int) -> bool:
        """Make a window's log the one being folded, unless a pass left one: whether there is one to fold."""
        with self._db.transaction() as tx:
            present = tables_of(tx, window)
            if session_folding_table(window) in present:
                return True
            if session_log_table(window) not in present:
                return False
            tx.execute(f"ALTER TABLE {session_log_table(window)} RENAME TO {session_folding_table(window)}")
            return True

    def _fold_window(self, window: int, *, rest: Rest | None, step_rows: int) -> int:
        """Merge a window's folding log into its state one session range at a time, then drop it."""
        state, folding = session_table(window), session_folding_table(window)
        with self._db.transaction() as tx:
            tx.execute(f"CREATE TABLE IF NOT EXISTS {state} ({SESSION_STATE_COLUMNS})")
            rows = int(tx.execute(f"SELECT count(*) FROM {folding}").fetchall()[0][0])
        steps = fold_steps(rows, step_rows)
        width = 2**64 // steps
        for step in range(steps):
            # Session hashes are uniform over BIGINT, so each range holds about rows / steps.
            low = -(2**63) + step * width
            high = low + width - 1
            with self._db.transaction() as tx:
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
            if rest is not None and step + 1 < steps:
                rest(time.perf_counter() - started)
        # Merging is idempotent (least, greatest): a crash before this drop folds the log again, to the same state.
        with self._db.transaction() as tx:
            tx.execute(f"DROP TABLE {folding}")
        return rows
