"""The one writer: an asyncio task that group-commits concurrent requests.

Handlers `await writer.submit(events)`; the task takes whatever is queued
(up to `max_rows`), appends it as one record to the store's active stage file
(write + fdatasync) in a worker thread, through the window owner (which
refuses the rows of a window that closed since their filter), then resolves
every waiting request.
A request is answered only after its append returned: acked means durable.
Once the stages hold `drain_rows`, a background drain moves them into the
store's DuckDB tables in one transaction, so that work (and DuckDB's
checkpoints) never delays an ack; it goes a row group at a time and rests
between them while it is ahead (node/pacing.py), so it never takes a core
from requests for long either.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from node.pacing import Pacing
from node.rows import RowBlock
from node.store import Store
from node.windows import WindowClosed, Windows
from runtime.groupcommit import GroupQueue, StorageUnavailable

log = logging.getLogger("liberation.node.writer")

DRAIN_ROWS = 131_072
"""Rows staged before a background drain moves them into the store.

Eight of the store's row groups (`ROW_GROUP_ROWS`), which DuckDB writes
straight to the database file as they fill, instead of to its WAL: drains
then leave checkpoints little to do (at 32,768 rows into row groups of
122,880, every third to sixth drain carried an 80-140 ms checkpoint), and
each costs one transaction and one emptying of a stage file. The export pass
drains first, so no row's minute stays in a stage file past the next pass
whatever this is.
"""


class Writer:
    """Group-commits submitted events; `observe` receives (rows, seconds) of each commit."""

    def __init__(
        self,
        store: Store,
        windows: Windows,
        *,
        max_rows: int = 50_000,
        drain_rows: int = DRAIN_ROWS,
        observe: Callable[[int, float], None] | None = None,
    ) -> None:
        self._store = store
        self._windows = windows
        # Rows per drain: bigger drains cost DuckDB less per row; smaller ones keep
        # the stage files (and each row's minute there) for less time.
        self._drain_rows = drain_rows
        self._observe = observe
        self._queue: GroupQueue[RowBlock] = GroupQueue(max_rows)
        self._task: asyncio.Task[None] | None = None
        self._draining: asyncio.Task[None] | None = None
        # A background drain rests between slices while the next one is not due yet.
        self._pacing = Pacing(urgent=lambda: store.staging.active_rows >= drain_rows)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stage-writer")

    async def stop(self) -> None:
        """Commit what is queued, then stop."""
        if self._task is None:
            return
        await self._queue.join()
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None
        if self._draining is not None:
            await self._draining

    async def submit(self, events: RowBlock) -> None:
        """Return once `events` are committed; raise StorageUnavailable if they were not,
        WindowClosed if their window stopped taking rows after the filter (nothing stored)."""
        if len(events) == 0:
            return
        await self._queue.put(events, len(events))

    async def _run(self) -> None:
        while True:
            group = await self._queue.take()
            started = time.perf_counter()
            error: BaseException | None = None
            refused: dict[int, BaseException] = {}
            try:
                admitted = await asyncio.to_thread(self._windows.append, group.items)
                refused = {i: WindowClosed() for i, ok in enumerate(admitted) if not ok}
            except Exception as exc:  # noqa: BLE001 - every waiter must hear of it
                log.error("commit of %d rows failed: %s", group.rows, type(exc).__name__)
                error = StorageUnavailable(type(exc).__name__)
            elapsed = time.perf_counter() - started
            if error is None and self._observe is not None:
                self._observe(group.rows, elapsed)
            self._queue.settle(group, error=error, refused=refused)
            if self._store.staged_rows >= self._drain_rows and (self._draining is None or self._draining.done()):
                self._draining = asyncio.create_task(self._drain(), name="duckdb-drain")

    async def _drain(self) -> None:
        try:
            await asyncio.to_thread(self._store.drain, rest=self._pacing)
        except Exception as exc:  # noqa: BLE001 - the rows stay staged and durable; the next drain retries
            log.error("drain failed: %s", type(exc).__name__)

