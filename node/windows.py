"""The window lifecycle, one owner: open -> closing -> exported (or expired), with salts and retention.

A window takes rows while it is open. Export marks it closing under the lock of the durable
append (`append`), then drains: an event filtered at 23:59:59 whose append comes after the
export pass of 00:00:01 began is refused (window-closed) instead of landing after its window
was read, where it would recreate the window's per-session state for good. Every window
expires `retention` after it closed: its raw rows, session state and salt go, exported or not,
so an export that stalls (a ledger refusal, a bug) never keeps linkable state forever. A window
is a UTC day or an ISO week (the catalog's `window`), with one salt of its own: the salt and the
per-session state live until that window is exported (or expires), and are destroyed then.
An expired window that was never exported is abandoned: recorded, never published (its rows
are gone; a release would show false zeros).
A window the record of published windows lists (node/published.py) is done like an exported one
even when the store lost its snapshot (a backup restored from before its export): it takes no
rows and is never due again, so it is never noised twice.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime

from node.rows import RowBlock
from node.salts import SaltKeeper
from node.schema import session_tables
from node.store import Store
from protocol.errors import LiberationError
from protocol.windows import WINDOW_LENGTHS, window_start

Clock = Callable[[], datetime]


class WindowClosed(Exception):
    """Rows of a window that takes no more (closing, exported or expired): nothing of them stored."""


class WindowLengthChanged(LiberationError):
    """The settings ask for another window length than the node's store was created with."""


class Windows:
    """Which windows take rows, which are due for export, and what retention removes."""

    def __init__(
        self,
        store: Store,
        salts: SaltKeeper,
        *,
        window_seconds: int,
        grace_seconds: int,
        retention_seconds: int,
        clock: Clock,
        published: Iterable[int] = (),
    ) -> None:
        """`published`: windows the node's record says were published (node/published.py), copy held or not."""
        if window_seconds not in WINDOW_LENGTHS.values():
            raise ValueError("a window is a day or a week")
        self.store = store
        self.salts = salts
        self.seconds = window_seconds
        self.grace_seconds = grace_seconds
        self.retention_seconds = retention_seconds
        self.clock = clock
        self._check_length()
        con = store.cursor()
        # exported: a committed snapshot is in the store. published: also those whose copy the store lost
        # (a restored backup): never noised again, so they take no rows and count as done like exported ones.
        self.exported: set[int] = {int(w) for (w,) in con.execute("SELECT window_start FROM snapshots").fetchall()}
        self.published: set[int] = self.exported | {int(w) for w in published}
        self.abandoned: set[int] = {
            int(name.removeprefix("abandoned:"))
            for (name,) in con.execute("SELECT name FROM node_state WHERE name LIKE 'abandoned:%'").fetchall()
        }
        self._closing: set[int] = set()
        # Held for every durable append and every change of a window's state: the two never interleave.
        self._lock = threading.Lock()

    def _check_length(self) -> None:
        """Record the window length at first start; refuse a silent switch later (windows would overlap)."""
        with self.store.transaction() as tx:
            tx.execute("INSERT INTO node_state VALUES ('window_seconds', ?) ON CONFLICT DO NOTHING", [self.seconds])
            recorded = int(tx.execute("SELECT value FROM node_state WHERE name = 'window_seconds'").fetchall()[0][0])
        if recorded != self.seconds:
            raise WindowLengthChanged(
                f"this node's windows are {recorded} s long, the settings ask for {self.seconds} s: "
                "windows of two lengths would overlap and spend the budget twice; keep the window "
                "setting, or start a new node (a new data dir and key)"
            )

    # ---- alignment and time ---------------------------------------------------------

    def window_of(self, moment: datetime) -> int:
        """Start (unix seconds) of the window holding `moment`."""
        return window_start(int(moment.timestamp()), self.seconds)

    def now(self) -> int:
        return int(self.clock().timestamp())

    def is_closed(self, window_start: int) -> bool:
        """Ended, and its grace period (for late requests in flight) passed: exportable."""
        return window_start + self.seconds + self.grace_seconds <= self.now()

    def is_expired(self, window_start: int) -> bool:
        """Closed for the retention period: its rows, state and salt are removed, exported or not."""
        return window_start + self.seconds + self.grace_seconds + self.retention_seconds <= self.now()

    def accepts(self, window_start: int) -> bool:
        """Whether rows of the window may still be stored: open (or importable), not closing, exported or expired."""
        return (
            window_start not in self.published
            and window_start not in self._closing
            and window_start not in self.abandoned
            and not self.is_expired(window_start)
        )

    def salt_for(self, window: datetime) -> bytes | None:
        """The salt that hashes sessions of `window` (its start), or None when the window takes no rows."""
        return self.salts.get(window) if self.accepts(int(window.timestamp())) else None

    # ---- the durable append -----------------------------------------------------------

    def append(self, blocks: Sequence[RowBlock]) -> list[bool]:
        """Stage the blocks whose windows all take rows (durable on return); which ones were stored."""
        with self._lock:
            admitted = [all(self.accepts(w) for w in {row[0] for row in block.rows}) for block in blocks]
            kept = [block for block, ok in zip(blocks, admitted, strict=False) if ok and len(block)]
            if kept:
                self.store.stage_rows([self.store.layout.table(kept)])
        return admitted

    def commit(self, blocks: Sequence[RowBlock]) -> int:
        """Append, then drain into the store (import): the rows refused because their window closed."""
        admitted = self.append(blocks)
        self.store.drain()
        return sum(len(block) for block, ok in zip(blocks, admitted, strict=False) if not ok)

    # ---- closing, export, expiry --------------------------------------------------------

    def close(self, window_start: int) -> None:
        """No append lands for the window after this returns; the caller drains, then exports."""
        with self._lock:
            self._closing.add(window_start)

    def mark_exported(self, window_start: int) -> None:
        """The window's snapshot is committed in the store (exported, or a lost copy adopted back)."""
        with self._lock:
            self.exported.add(window_start)
            self.published.add(window_start)
            self._closing.discard(window_start)

    def first_window(self) -> int:
        """The node's first window: its creation, or earlier if history was imported."""
        con = self.store.cursor()
        created = con.execute("SELECT value FROM node_state WHERE name = 'first_window'").fetchall()
        if not created:
            with self.store.transaction() as tx:
                tx.execute(
                    "INSERT INTO node_state VALUES ('first_window', ?) ON CONFLICT DO NOTHING",
                    [self.window_of(self.clock())],
                )
            return self.first_window()
        earliest = con.execute("SELECT min(window_start) FROM events").fetchall()[0][0]
        return int(min(created[0][0], earliest if earliest is not None else created[0][0]))

    def due(self) -> list[int]:
        """Every closed window since the first that is neither published nor abandoned, oldest first.

        Every window is exported, with data or without: skipping empty ones
        would publish whether anybody came, outside the DP guarantee.
        """
        first, now_window = self.first_window(), self.window_of(self.clock())
        return [
            w
            for w in range(first, now_window, self.seconds)
            if w not in self.published and w not in self.abandoned and self.is_closed(w)
        ]

    def expire(self) -> list[int]:
        """Remove what retention allows no longer; return the windows abandoned unexported by this call.

        Raw rows and per-session state of expired windows go whether or not they were
        exported; an unexported one is recorded as abandoned so it is never published.
        """
        horizon = self.now() - self.seconds - self.grace_seconds - self.retention_seconds  # expired: start <= horizon
        first = self.first_window()
        stale = [w for w in session_tables(self.store.cursor()) if w <= horizon]
        unexported = [
            w for w in range(first, horizon + 1, self.seconds)
            if w not in self.published and w not in self.abandoned
        ] if first <= horizon else []
        with self._lock, self.store.transaction() as tx:
            self.store.delete_rows(tx, until=horizon)
            for window in stale:
                self.store.drop_session_state(tx, window)
            for window in unexported:
                tx.execute("INSERT INTO node_state VALUES (?, 0) ON CONFLICT DO NOTHING", [f"abandoned:{window}"])
            self.abandoned.update(unexported)
        self.destroy_salts()
        return unexported

    def destroy_salts(self) -> int:
        """Destroy the salt of every window that can no longer take rows nor await export: published, abandoned or expired."""
        destroyed, first = 0, self.first_window()
        for day in self.salts.days():
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            w = window_start(int(start.timestamp()), self.seconds)
            if w in self.published or w in self.abandoned or w < first or self.is_expired(w):
                self.salts.destroy(start)
                destroyed += 1
        return destroyed
