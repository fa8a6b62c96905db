"""The running node: everything it owns (catalog, key, store, windows, writer, filter, publisher, outbox) and its passes.

Opened and closed together under the data dir's lock; no server involved: the app factory
(node/app.py) opens it in its lifecycle and runs `maintain` every export interval, the CLI
(`offline_node`) works on a stopped node's files.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import duckdb
from aiohttp import web

from node.export import BudgetExceeded, KeepersUnknown, Publisher, epsilon_cap_default
from node.geo import GeoLocator
from node.ingest import Clock, Ingestor, utc_now
from node.keepers import KeeperDirectory
from node.metrics import NodeMetrics
from node.outbox import Outbox
from node.pacing import Pacing
from node.privacy import PrivacyFilter
from node.published import PublishedLog
from node.ratelimit import RateLimiter
from node.salts import SaltKeeper
from node.settings import NodeSettings
from node.store import Store
from node.views import SnapshotRanges
from node.windows import Windows
from node.writer import Writer
from protocol.catalog import Catalog, load_catalog
from protocol.keys import SigningKey, load_or_create
from protocol.windows import DAY, format_utc
from runtime.datadir import DataDirLock, open_locked
from views.ranges import ViewService

log = logging.getLogger("liberation.node")


@dataclass
class Node:
    """Everything one running node owns; reachable from handlers through `NODE`."""

    settings: NodeSettings
    catalog: Catalog
    key: SigningKey
    store: Store
    windows: Windows
    writer: Writer
    geo: GeoLocator
    ingestor: Ingestor
    metrics: NodeMetrics
    publisher: Publisher
    outbox: Outbox
    clock: Clock
    lock: DataDirLock  # this process's hold on the data dir, released by close_node
    views: ViewService = field(init=False)
    # Export passes never overlap (the periodic task, and a call from a test or tool).
    _exporting: threading.Lock = field(init=False, default_factory=threading.Lock)
    # Published windows whose lost copy was reported (once a process: the record keeps them for good).
    _reported_missing: set[int] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        # The data version of the views cache: one more exported window, new data.
        self.views = ViewService(
            SnapshotRanges(self.publisher),
            {self.catalog.hash: self.catalog},
            lambda: len(self.windows.exported),
            now=lambda: self.clock().timestamp(),
        )

    def maintain(self) -> list[int]:
        """The periodic pass: staged rows into the store and session rows folded, paced; then `export_due`."""
        pacing = Pacing()
        self.store.drain(rest=pacing)
        with self.metrics.fold_seconds.time():
            self.metrics.fold_rows.inc(self.store.fold_sessions(rest=pacing))
        return self.export_due()

    def export_due(self) -> list[int]:
        """Export every closed window not yet exported; then retention, and the file rewrite it calls for.

        A window the ledger refuses is skipped (counted and logged each pass), never a
        stop for the windows after it; retention removes its state all the same.
        """
        with self._exporting:
            self._report_missing()
            done = []
            for window in self.windows.due():
                try:
                    self._export(window)
                except BudgetExceeded as exc:
                    self.metrics.exports_refused.labels("budget").inc()
                    log.error("export refused: %s", exc, extra={"window_start": format_utc(window)})
                    continue
                except KeepersUnknown as exc:
                    self.metrics.exports_refused.labels("keepers-unknown").inc()
                    log.warning("export waits: %s", exc, extra={"window_start": format_utc(window)})
                    continue
                done.append(window)
            for window in self.windows.expire():
                self.metrics.exports_refused.labels("expired").inc()
                log.error("window expired unexported: its rows and state are deleted, it is never published",
                          extra={"window_start": format_utc(window)})
            if self.store.erase_pending():
                self._compact()
            # Here, between exports (the only big queries): ingest's cached table blocks are dropped
            # so the node's memory stays flat instead of growing toward memory_limit.
            self.store.trim_cache()
            return done

    def export(self, window: int) -> bytes:
        """One window's envelope, exported now if it was not yet (`liberation node export`), between export passes."""
        with self._exporting:
            return self._export(window)

    def _export(self, window: int) -> bytes:
        fresh = window not in self.windows.exported
        envelope = self.publisher.export(window)
        if fresh:
            self.metrics.snapshots_exported.inc()
        return envelope

    def adopt(self, envelope: bytes) -> int:
        """Store the lost copy of a published window (node/export.py `Publisher.adopt`); its window."""
        with self._exporting:
            window = self.publisher.adopt(envelope)
        self.metrics.snapshots_adopted.inc()
        log.info("adopted the lost copy of a published window: the same bytes, no new noise",
                 extra={"window_start": format_utc(window)})
        return window

    def _report_missing(self) -> None:
        """Skip, count and log each published window the store has no copy of; drop its state as its export did."""
        for entry in self.publisher.missing():
            if entry.window_start in self._reported_missing:
                continue
            self._reported_missing.add(entry.window_start)
            self.publisher.drop_state(entry.window_start)
            self.metrics.exports_refused.labels("published-copy-missing").inc()
            log.error(
                "window published but its copy is missing from the store (a backup from before its export?): "
                "never exported again; adopt its copy (hub, or `liberation node adopt`, docs/operations.md)",
                extra={"window_start": format_utc(entry.window_start), "digest": entry.digest},
            )

    def _compact(self) -> None:
        """Rewrite the store so the rows and state this pass deleted leave the file; a failure is retried next pass."""
        try:
            with self.metrics.compact_seconds.time():
                self.store.compact()
        except (duckdb.Error, OSError, RuntimeError) as exc:
            self.metrics.compact_failures.inc()
            log.error("rewrite of the store failed; deleted rows stay in its free blocks until a pass succeeds: %s",
                      type(exc).__name__)


NODE = web.AppKey("node", Node)


def data_paths(settings: NodeSettings) -> dict[str, Path]:
    """Where a node keeps its files under its data dir."""
    root = settings.data_dir
    return {
        "db": root / "node.duckdb",
        "key": root / "keys" / "signing.key",
        # Beside the key, outside the database a restore puts back (node/published.py).
        "published": root / "keys" / "published.log",
        "salts": root / "salts",
    }


def open_node(settings: NodeSettings, *, clock: Clock = utc_now, wait_seconds: float = 0.0) -> Node:
    """Open (creating on first start) everything a node needs, under its data dir's lock (runtime/datadir.py).

    The catalog is read first; then nothing in the dir is opened or cleaned up while another
    process holds it (a service waits `wait_seconds` for a command on its files to finish). The
    dir is made 0700 whatever the umask: raw rows, salts, keys.
    """
    catalog = load_catalog(settings.catalog)
    return open_locked(settings.data_dir, "node", lambda lock: _open(settings, catalog, clock, lock), wait_seconds=wait_seconds)


def _open(settings: NodeSettings, catalog: Catalog, clock: Clock, lock: DataDirLock) -> Node:
    paths = data_paths(settings)
    key = load_or_create(paths["key"])
    record = PublishedLog(paths["published"])
    store = Store(paths["db"], catalog, memory_limit=settings.memory_limit)
    retention_days = catalog.retention_days if settings.retention_days is None else settings.retention_days
    windows = Windows(
        store,
        SaltKeeper(paths["salts"]),
        window_seconds=catalog.window_seconds,
        grace_seconds=settings.export_grace_seconds,
        retention_seconds=retention_days * DAY,
        clock=clock,
        published=[entry.window_start for entry in record.entries()],
    )
    metrics = NodeMetrics(
        rows=store.row_count, db_bytes=store.size_bytes, db_memory=store.memory_bytes,
        last_export=lambda: publisher.last_export(), last_push=lambda: outbox.last_success(),
    )
    writer = Writer(store, windows, max_rows=settings.commit_max_rows, observe=metrics.observe_commit)
    geo = GeoLocator(settings.geoip_database)
    publisher = Publisher(
        store=store,
        catalog=catalog,
        key=key,
        windows=windows,
        epsilon_cap_per_day=settings.epsilon_cap_per_day
        or epsilon_cap_default(catalog),
        record=record,
        keepers=KeeperDirectory(store, settings.rounds.keepers),
        keeper_wait_seconds=settings.rounds.wait_for_keepers_seconds,
    )
    outbox = Outbox(
        store,
        settings.push,
        on_corrupt=lambda seq: metrics.corrupt_snapshots.inc(),
        on_result=lambda outcome: metrics.pushes.labels(outcome).inc(),
    )
    ingestor = Ingestor(
        settings=settings,
        privacy=PrivacyFilter(
            catalog,
            clock_skew=timedelta(seconds=settings.clock_skew_seconds),
        ),
        salts=windows.salt_for,
        writer=writer,
        geo=geo,
        limiter=RateLimiter(settings.rate_limit.requests_per_second, settings.rate_limit.burst),
        metrics=metrics,
        clock=clock,
    )
    return Node(settings, catalog, key, store, windows, writer, geo, ingestor, metrics, publisher, outbox, clock, lock)


def close_node(node: Node) -> None:
    node.geo.close()
    node.store.close()
    node.lock.release()


@asynccontextmanager
async def offline_node(settings: NodeSettings) -> AsyncIterator[Node]:
    """A stopped node opened by this process with its writer running: how the CLI works on its files.

    On the way out every staged row moves into the store and the session log is folded, as
    the running node's next export pass would: no event's minute stays behind in a stage file.
    """
    node = await asyncio.to_thread(open_node, settings)
    try:
        await node.writer.start()
        try:
            yield node
        finally:
            await node.writer.stop()
            await asyncio.to_thread(_settle, node)
    finally:
        close_node(node)


def _settle(node: Node) -> None:
    node.store.drain()
    node.store.fold_sessions()
