"""An ingest worker's side of the handoff: salts fetched and cached per window, filtered rows group-sent to the main process.

The forwarder is the worker's `EventSink`: like the writer, it drains
whatever concurrent requests have queued, sends it as one Arrow IPC stream,
and resolves each request when the main process answered after its commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from datetime import datetime

import aiohttp

from node.groupqueue import GroupQueue
from node.handoff import COUNTS_PATH, SALT_PATH, RowsChannel, encode_counts, encode_rows
from node.metrics import NodeMetrics
from node.privacy import window_of
from node.rows import RowBlock, RowLayout
from node.writer import StorageUnavailable, WindowClosed
from protocol.errors import ServiceUnavailable

log = logging.getLogger("liberation.node.worker")

BASE = "http://main"  # requests go over the Unix socket; the host name is a placeholder
SALT_TTL_SECONDS = 1.0
"""How long a worker trusts a cached salt (or a closed answer); the main re-checks windows at commit anyway."""
COUNTS_INTERVAL_SECONDS = 1.0


class SaltCache:
    """The salts of the windows this worker is filtering for, fetched from the main process."""

    def __init__(self, session: aiohttp.ClientSession, window_seconds: int) -> None:
        self._session = session
        self._window_seconds = window_seconds
        self._cache: dict[datetime, tuple[float, bytes | None]] = {}
        self._fetching: dict[datetime, asyncio.Future[None]] = {}

    async def prefetch(self, now: datetime) -> None:
        """Make sure the salt of `now`'s window is cached and fresh (one fetch however many ask)."""
        window = window_of(now, self._window_seconds)
        entry = self._cache.get(window)
        if entry is not None and time.monotonic() - entry[0] < SALT_TTL_SECONDS:
            return
        running = self._fetching.get(window)
        if running is None:
            running = self._fetching[window] = asyncio.ensure_future(self._fetch(window))
        try:
            await asyncio.shield(running)
        finally:
            if running.done():
                self._fetching.pop(window, None)

    async def _fetch(self, window: datetime) -> None:
        try:
            async with self._session.get(BASE + SALT_PATH.format(window=int(window.timestamp()))) as resp:
                body = await resp.read()
                if resp.status not in (200, 410):
                    raise StorageUnavailable(f"salt: HTTP {resp.status}")
        except (aiohttp.ClientError, OSError) as exc:
            raise ServiceUnavailable("storage is unavailable; retry later", retry_after=5, slug="storage-unavailable") from exc
        except StorageUnavailable:
            raise ServiceUnavailable("storage is unavailable; retry later", retry_after=5, slug="storage-unavailable") from None
        now = time.monotonic()
        # Entries of other windows go once stale: a closed window's salt is not kept around.
        self._cache = {w: e for w, e in self._cache.items() if now - e[0] < SALT_TTL_SECONDS}
        self._cache[window] = (now, body if resp.status == 200 else None)

    def get(self, window: datetime) -> bytes | None:
        """The `SaltSource` of the worker's filter: what `prefetch` cached (None: closed)."""
        entry = self._cache.get(window)
        return None if entry is None else entry[1]


class Forwarder:
    """Sends filtered rows to the main process in groups; `submit` returns after the main's commit."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        rows: RowsChannel,
        layout: RowLayout,
        metrics: NodeMetrics,
        *,
        max_rows: int = 50_000,
    ) -> None:
        self._session = session
        self._rows = rows
        self._layout = layout
        self._metrics = metrics
        self._queue: GroupQueue[RowBlock] = GroupQueue(max_rows)
        self._shipped: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name="handoff"),
            asyncio.create_task(self._ship_periodically(), name="handoff-counts"),
        ]

    async def stop(self) -> None:
        """Send what is queued and the last counts, then stop."""
        await self._queue.join()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(aiohttp.ClientError, OSError):
            await self._ship_counts()
        self._rows.close()

    async def submit(self, events: RowBlock) -> None:
        """Return once the main process committed `events`; StorageUnavailable or WindowClosed if not."""
        if len(events) == 0:
            return
        closed: frozenset[int] = await self._queue.put(events, len(events))
        if events.window in closed:
            raise WindowClosed()

    def _deltas(self) -> dict[str, float]:
        counts = self._metrics.ingest_counts()
        deltas = {k: v - self._shipped.get(k, 0.0) for k, v in counts.items() if v != self._shipped.get(k, 0.0)}
        self._shipped = counts
        return deltas

    async def _ship_counts(self) -> None:
        deltas = self._deltas()
        if deltas:
            try:
                async with self._session.post(BASE + COUNTS_PATH, data=encode_counts(deltas)) as resp:
                    await resp.read()
            except BaseException:
                self._unship(deltas)
                raise

    def _unship(self, deltas: dict[str, float]) -> None:
        # Not delivered: ship them again next time.
        for key, value in deltas.items():
            self._shipped[key] = self._shipped.get(key, 0.0) - value

    async def _ship_periodically(self) -> None:
        while True:
            await asyncio.sleep(COUNTS_INTERVAL_SECONDS)
            try:
                await self._ship_counts()
            except (aiohttp.ClientError, OSError) as exc:
                log.warning("counts not shipped: %s", type(exc).__name__)

    async def _run(self) -> None:
        while True:
            group = await self._queue.take()
            error: BaseException | None = None
            closed: frozenset[int] = frozenset()
            deltas = self._deltas()
            answered = False
            try:
                body = encode_rows(self._layout.table(group.items))
                status, answer = await self._rows.send(encode_counts(deltas).encode(), body)
                answered = True  # the main process took the counts, whatever became of the rows
                if status == 200:
                    closed = frozenset(json.loads(answer)["closed"])
                else:
                    error = StorageUnavailable(f"status {status}")
            except (OSError, EOFError, ValueError) as exc:
                log.error("handoff of %d rows failed: %s", group.rows, type(exc).__name__)
                error = StorageUnavailable(type(exc).__name__)
            if not answered and deltas:
                self._unship(deltas)
            self._queue.settle(group, closed, error)
