"""The node's app factory: explicit wiring of catalog, key, store, salts, writer, filter and routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import duckdb
from aiohttp import web

from node.admin import NODE_OPERATIONS
from node.export import AdoptionRefused, BudgetExceeded, KeepersUnknown, Publisher, epsilon_cap_default
from node.geo import GeoLocator
from node.ingest import Clock, Ingestor, utc_now
from node.keepers import KeeperDirectory
from node.metrics import NodeMetrics
from node.openapi import serve_openapi
from node.origins import cors_middleware
from node.outbox import Outbox
from node.pacing import Pacing
from node.privacy import PrivacyFilter
from node.published import PublishedLog
from node.ratelimit import RateLimiter
from node.routes import INGEST, IngestTarget, add_ingest_routes
from node.salts import SaltKeeper
from node.settings import NodeSettings
from node.setupcheck import setup_routes
from node.store import Store
from node.views import SnapshotRanges
from node.views import windows_document as node_windows_document
from node.windows import Windows
from node.writer import Writer
from protocol.catalog import Catalog, load_catalog
from protocol.envelope import verify_envelope
from protocol.errors import NotFound, ProblemType
from protocol.keys import SigningKey, load_or_create
from protocol.windows import DAY, parse_window
from runtime.admin import add_admin_socket
from runtime.datadir import SERVICE_WAIT_SECONDS, DataDirLock
from runtime.metrics_listener import add_metrics_listener
from runtime.problems import problem_middleware
from runtime.version import liberation_version
from views.cors import views_cors_middleware
from views.dashboard import add_dashboard_routes
from views.ranges import (
    CACHE_CONTROL,
    ViewService,
    catalog_document,
    view_handler,
    views_index,
)
from views.tidy import cells_handler

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
    lock: DataDirLock | None = None  # this process's hold on the data dir, released by close_node
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
                    log.error("export refused: %s", exc, extra={"window_start": _iso(window)})
                    continue
                except KeepersUnknown as exc:
                    self.metrics.exports_refused.labels("keepers-unknown").inc()
                    log.warning("export waits: %s", exc, extra={"window_start": _iso(window)})
                    continue
                done.append(window)
            for window in self.windows.expire():
                self.metrics.exports_refused.labels("expired").inc()
                log.error("window expired unexported: its rows and state are deleted, it is never published",
                          extra={"window_start": _iso(window)})
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
                 extra={"window_start": _iso(window)})
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
                extra={"window_start": _iso(entry.window_start), "digest": entry.digest},
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
    """Open (creating on first start) everything a node needs; no server involved.

    The data dir's lock comes first: nothing in it is opened or cleaned up while another process
    holds it (a service waits `wait_seconds` for a command on its files to finish).
    """
    catalog = load_catalog(settings.catalog)
    # The dir is made 0700 whatever the umask: raw rows, salts, keys.
    lock = DataDirLock.acquire(settings.data_dir, "node", wait_seconds=wait_seconds)
    try:
        node = _open(settings, catalog, clock)
    except BaseException:
        lock.release()
        raise
    node.lock = lock
    return node


def _open(settings: NodeSettings, catalog: Catalog, clock: Clock) -> Node:
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
    return Node(settings, catalog, key, store, windows, writer, geo, ingestor, metrics, publisher, outbox, clock)


def close_node(node: Node) -> None:
    node.geo.close()
    node.store.close()
    if node.lock is not None:
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


async def _healthz(request: web.Request) -> web.Response:
    node = request.app[NODE]
    return web.json_response(
        {"status": "ok", "version": liberation_version(), "key_id": node.key.public.key_id, "catalog": node.catalog.hash}
    )


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _about(request: web.Request) -> web.Response:
    """Who serves this page: a node shows one community's own published numbers (the dashboard says so)."""
    node = request.app[NODE]
    return web.json_response(
        {"kind": "node", "name": node.settings.display_name, "key_id": node.key.public.key_id, "communities": 1},
        headers={"Cache-Control": CACHE_CONTROL},
    )


async def _snapshot(request: web.Request) -> web.Response:
    node = request.app[NODE]
    window = parse_window(request.match_info["window"], node.windows.seconds)
    envelope = await asyncio.to_thread(node.publisher.verified, window)
    if envelope is None:
        raise NotFound("no published snapshot for that window", slug=ProblemType.NO_SNAPSHOT)
    return web.Response(
        body=envelope,
        content_type="application/msgpack",
        headers={"Cache-Control": "public, max-age=86400, immutable"},
    )


def _published(node: Node) -> list[dict[str, object]]:
    rows = node.store.cursor().execute(
        "SELECT window_start, window_end, seq, digest, created FROM snapshots ORDER BY window_start"
    ).fetchall()
    return [
        {"window_start": _iso(w), "window_end": _iso(e), "seq": seq, "digest": d, "created": _iso(c),
         "url": f"/v1/snapshots/{w}"}
        for w, e, seq, d, c in rows
    ]


async def _snapshots(request: web.Request) -> web.Response:
    node = request.app[NODE]
    items = await asyncio.to_thread(_published, node)
    return web.json_response({"node": node.key.public.key_id, "catalog": node.catalog.hash, "snapshots": items})


def _contributed(node: Node) -> list[dict[str, object]]:
    rows = node.store.cursor().execute(
        "SELECT window_start, window_end, digest, created FROM contributions ORDER BY window_start"
    ).fetchall()
    return [
        {"window_start": _iso(w), "window_end": _iso(e), "digest": d, "created": _iso(c), "url": f"/v1/contributions/{w}"}
        for w, e, d, c in rows
    ]


async def _contributions(request: web.Request) -> web.Response:
    node = request.app[NODE]
    items = await asyncio.to_thread(_contributed, node)
    return web.json_response({"node": node.key.public.key_id, "catalog": node.catalog.hash, "contributions": items})


async def _contribution(request: web.Request) -> web.Response:
    """A committed contribution: masked counts (uniform without the keepers' seeds) and seeds sealed to the keepers."""
    node = request.app[NODE]
    window = parse_window(request.match_info["window"], node.windows.seconds)
    envelope = await asyncio.to_thread(node.publisher.contribution, window)
    if envelope is None:
        raise NotFound("no contribution for that window", slug=ProblemType.NO_CONTRIBUTION)
    return web.Response(body=envelope, content_type="application/msgpack",
                        headers={"Cache-Control": "public, max-age=86400, immutable"})


async def _ledger(request: web.Request) -> web.Response:
    node = request.app[NODE]
    entries = await asyncio.to_thread(node.publisher.ledger)
    return web.json_response(
        {
            "node": node.key.public.key_id,
            "epsilon_cap_per_day": node.publisher.cap,
            "entries": [
                {"window_start": _iso(e.window_start), "metric": e.metric, "epsilon": e.epsilon,
                 "scale": e.scale, "threshold": e.threshold, "catalog": e.catalog, "digest": e.digest}
                for e in entries
            ],
        }
    )


async def _local_summary(request: web.Request) -> web.Response:
    """The node's own published view: its snapshots, decoded (public, nothing un-noised)."""
    node = request.app[NODE]
    published = await asyncio.to_thread(_published, node)
    recent = published[-7:]
    windows = []
    for item in recent:
        envelope = await asyncio.to_thread(
            node.publisher.verified, int(datetime.fromisoformat(str(item["window_start"]).replace("Z", "+00:00")).timestamp())
        )
        if envelope is None:
            continue
        snapshot = verify_envelope(envelope).snapshot
        metrics = {}
        for name, cells in snapshot.metrics.items():
            spec = node.catalog.metric(name)
            metrics[name] = {
                "threshold": cells.threshold,
                "sd": round(math.sqrt(cells.variance), 2),
                "cells": [
                    {"labels": list(node.catalog.cell_labels(spec, i)), "value": v}
                    for i, v in zip(cells.idx, cells.val, strict=False)
                ],
            }
        windows.append({"window_start": item["window_start"], "window_end": item["window_end"], "metrics": metrics})
    return web.json_response(
        {
            "node": node.key.public.key_id,
            "catalog": node.catalog.hash,
            "note": "the node's published snapshots (noised and thresholded), newest last",
            "windows": windows,
        },
        headers={"Cache-Control": "public, max-age=60"},
    )


async def _every(interval: float, stop: asyncio.Event, name: str, step: Callable[[], Awaitable[object]]) -> None:
    """Run `step` now and then every `interval` seconds until `stop` is set.

    A step already running is allowed to finish (it may be inside a DuckDB call
    in a worker thread), so shutdown never closes the store under it.
    """
    while not stop.is_set():
        try:
            await step()
        except Exception as exc:  # noqa: BLE001 - keep the loop alive, say why
            log.error("%s pass failed: %s", name, type(exc).__name__)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)


async def _view(request: web.Request) -> web.StreamResponse:
    return await view_handler(request, request.app[NODE].views)


async def _cells(request: web.Request) -> web.StreamResponse:
    return await cells_handler(request, request.app[NODE].views)


async def _catalog(request: web.Request) -> web.Response:
    return web.json_response(catalog_document(request.app[NODE].catalog), headers={"Cache-Control": CACHE_CONTROL})


async def _windows(request: web.Request) -> web.Response:
    node = request.app[NODE]
    body = await asyncio.to_thread(node_windows_document, node.publisher, node.catalog)
    return web.json_response(body, headers={"Cache-Control": CACHE_CONTROL})


async def _export_step(node: Node, session: aiohttp.ClientSession) -> None:
    await _adopt_hub_copies(node, session)
    keepers = node.publisher.keepers
    if keepers is not None and keepers.missing() and node.settings.push.hub_url:
        await keepers.fetch(session, node.settings.push.hub_url, node.settings.push.timeout_seconds)
    for window in await asyncio.to_thread(node.maintain):
        log.info("exported", extra={"window_start": _iso(window)})


async def _adopt_hub_copies(node: Node, session: aiohttp.ClientSession) -> None:
    """Fetch from the hub the copies of published windows the store lost, and adopt those that are the recorded ones."""
    if not node.settings.push.hub_url:
        return
    for entry in await asyncio.to_thread(node.publisher.missing):
        envelope = await node.outbox.fetch_copy(session, entry.key_id, entry.window_start)
        if envelope is None:
            continue
        try:
            await asyncio.to_thread(node.adopt, envelope)
        except AdoptionRefused as exc:
            log.error("the hub's copy of a published window was refused: %s", exc,
                      extra={"window_start": _iso(entry.window_start)})


async def _export_loop(node: Node, stop: asyncio.Event) -> None:
    async with aiohttp.ClientSession() as session:
        await _every(node.settings.export_interval_seconds, stop, "export", lambda: _export_step(node, session))


async def _push_loop(node: Node, stop: asyncio.Event) -> None:
    async with aiohttp.ClientSession() as session:
        await _every(node.settings.push.interval_seconds, stop, "push", lambda: node.outbox.push_due(session))


def create_app(settings: NodeSettings, *, clock: Clock = utc_now) -> web.Application:
    """Build the node's aiohttp application; resources open in cleanup_ctx, not at import."""
    app = web.Application(
        middlewares=[views_cors_middleware(settings.views_cors_origins), problem_middleware, cors_middleware(settings)],
        client_max_size=settings.max_body_bytes,
    )

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        node = await asyncio.to_thread(open_node, settings, clock=clock, wait_seconds=SERVICE_WAIT_SECONDS)
        app[NODE] = node
        app[INGEST] = IngestTarget(node.ingestor, node.catalog)
        await node.writer.start()
        stop = asyncio.Event()
        tasks = [asyncio.create_task(_export_loop(node, stop), name="export")]
        if settings.push.hub_url:
            tasks.append(asyncio.create_task(_push_loop(node, stop), name="push"))
        log.info("node ready", extra={"key_id": node.key.public.key_id, "catalog": node.catalog.hash})
        yield
        stop.set()
        await asyncio.gather(*tasks)
        await node.writer.stop()
        close_node(node)

    app.cleanup_ctx.append(lifecycle)
    add_admin_socket(
        app, service="node", version=liberation_version(), data_dir=settings.data_dir,
        target=lambda app: app[NODE], operations=NODE_OPERATIONS,
    )
    add_metrics_listener(
        app, service="node", host=settings.metrics_host, port=settings.metrics_port,
        render=lambda app: app[NODE].metrics.render,
        pages=lambda app: setup_routes(app[NODE]),  # the operator's setup check, never on the public port
    )
    add_ingest_routes(app)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/v1/local/summary", _local_summary)
    app.router.add_get("/v1/snapshots", _snapshots)
    app.router.add_get("/v1/snapshots/{window}", _snapshot)
    app.router.add_get("/v1/contributions", _contributions)
    app.router.add_get("/v1/contributions/{window}", _contribution)
    app.router.add_get("/v1/ledger", _ledger)
    app.router.add_get("/v1/views", views_index)
    app.router.add_get("/v1/views/{name}", _view)
    app.router.add_get("/v1/catalog", _catalog)
    app.router.add_get("/v1/about", _about)
    app.router.add_get("/v1/cells", _cells)
    app.router.add_get("/v1/windows", _windows)
    add_dashboard_routes(app)  # the node's own published view, same dashboard as the hub
    app.router.add_get("/openapi.json", serve_openapi)
    return app
