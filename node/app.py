"""The node's app factory: explicit wiring of catalog, key, store, salts, writer, filter and routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import duckdb
from aiohttp import web
from aiohttp.typedefs import Middleware

from node.export import AdoptionRefused, BudgetExceeded, Publisher, epsilon_cap_default
from node.geo import GeoLocator
from node.ingest import Clock, Ingestor, utc_now
from node.metrics import NodeMetrics
from node.openapi import serve_openapi
from node.outbox import Outbox
from node.pacing import Pacing
from node.privacy import PrivacyFilter
from node.published import PublishedLog
from node.ratelimit import RateLimiter
from node.routes import INGEST, IngestTarget, add_ingest_routes
from node.salts import SaltKeeper
from node.settings import NodeSettings
from node.store import Store
from node.views import SnapshotRanges
from node.views import windows_document as node_windows_document
from node.windows import Windows
from node.writer import Writer
from protocol.catalog import Catalog, load_catalog
from protocol.envelope import verify_envelope
from protocol.errors import Forbidden, NotFound, ProblemType
from protocol.files import make_private_dir
from protocol.keys import SigningKey, load_or_create
from protocol.windows import DAY, parse_window
from runtime.metrics_listener import add_metrics_listener
from runtime.problems import problem_middleware
from views.dashboard import add_dashboard_routes
from views.ranges import (
    CACHE_CONTROL,
    ViewService,
    catalog_document,
    view_handler,
    views_index,
)

log = logging.getLogger("liberation.node")

INGEST_PATHS = frozenset({"/v1/events", "/api/event"})


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
                    self.publisher.export(window)
                except BudgetExceeded as exc:
                    self.metrics.exports_refused.labels("budget").inc()
                    log.error("export refused: %s", exc, extra={"window_start": _iso(window)})
                    continue
                self.metrics.snapshots_exported.inc()
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


def open_node(settings: NodeSettings, *, clock: Clock = utc_now) -> Node:
    """Open (creating on first start) everything a node needs; no server involved."""
    catalog = load_catalog(settings.catalog)
    paths = data_paths(settings)
    make_private_dir(settings.data_dir)  # 0700 whatever the umask: raw rows, salts, keys
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
    metrics = NodeMetrics(rows=store.row_count, db_bytes=store.size_bytes, db_memory=store.memory_bytes)
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


def _cors_allowed(settings: NodeSettings, origin: str) -> bool:
    return "*" in settings.cors_origins or origin in settings.cors_origins


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def cors_middleware(settings: NodeSettings) -> Middleware:
    """Answer preflights and tag responses for configured origins; refuse events from others."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None or request.path not in INGEST_PATHS:
            return await handler(request)
        same_origin = origin == f"{request.scheme}://{request.host}"
        allowed = same_origin or _cors_allowed(settings, origin)
        if request.method == "OPTIONS":
            if not allowed:
                raise Forbidden("origin is not allowed to send events", slug=ProblemType.ORIGIN_NOT_ALLOWED)
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "Content-Type"
            response.headers["Access-Control-Max-Age"] = "86400"
        elif not allowed:
            raise Forbidden("origin is not allowed to send events", slug=ProblemType.ORIGIN_NOT_ALLOWED)
        else:
            response = await handler(request)
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
        return response

    return middleware


async def _healthz(request: web.Request) -> web.Response:
    node = request.app[NODE]
    return web.json_response(
        {"status": "ok", "key_id": node.key.public.key_id, "catalog": node.catalog.hash}
    )


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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


async def _catalog(request: web.Request) -> web.Response:
    return web.json_response(catalog_document(request.app[NODE].catalog), headers={"Cache-Control": CACHE_CONTROL})


async def _windows(request: web.Request) -> web.Response:
    node = request.app[NODE]
    body = await asyncio.to_thread(node_windows_document, node.publisher, node.catalog)
    return web.json_response(body, headers={"Cache-Control": CACHE_CONTROL})


async def _export_step(node: Node, session: aiohttp.ClientSession) -> None:
    await _adopt_hub_copies(node, session)
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
        middlewares=[problem_middleware, cors_middleware(settings)],
        client_max_size=settings.max_body_bytes,
    )

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        node = await asyncio.to_thread(open_node, settings, clock=clock)
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
    add_metrics_listener(
        app, service="node", host=settings.metrics_host, port=settings.metrics_port,
        render=lambda app: app[NODE].metrics.render,
    )
    add_ingest_routes(app)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/v1/local/summary", _local_summary)
    app.router.add_get("/v1/snapshots", _snapshots)
    app.router.add_get("/v1/snapshots/{window}", _snapshot)
    app.router.add_get("/v1/ledger", _ledger)
    app.router.add_get("/v1/views", views_index)
    app.router.add_get("/v1/views/{name}", _view)
    app.router.add_get("/v1/catalog", _catalog)
    app.router.add_get("/v1/windows", _windows)
    add_dashboard_routes(app)  # the node's own published view, same dashboard as the hub
    app.router.add_get("/openapi.json", serve_openapi)
    return app
