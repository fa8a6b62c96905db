"""The node's app factory: explicit wiring of catalog, key, store, salts, writer, filter and routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path

from aiohttp import web

from node.geo import GeoLocator
from node.ingest import Clock, Ingestor, post_events, utc_now
from node.metrics import NodeMetrics
from node.plausible import post_plausible_event
from node.privacy import PrivacyFilter
from node.ratelimit import RateLimiter
from node.salts import SaltKeeper
from node.settings import NodeSettings
from node.store import Store
from node.writer import Writer
from protocol.catalog import Catalog, load_catalog
from protocol.errors import Forbidden, problem_middleware
from protocol.keys import SigningKey, load_or_create

log = logging.getLogger("liberation.node")

INGEST_PATHS = frozenset({"/v1/events", "/api/event"})
RETENTION_INTERVAL_SECONDS = 3600.0


@dataclass
class Node:
    """Everything one running node owns; reachable from handlers through `NODE`."""

    settings: NodeSettings
    catalog: Catalog
    key: SigningKey
    store: Store
    salts: SaltKeeper
    writer: Writer
    geo: GeoLocator
    ingestor: Ingestor
    metrics: NodeMetrics
    clock: Clock

    @property
    def retention(self) -> timedelta:
        days = self.settings.retention_days
        return timedelta(days=self.catalog.retention_days if days is None else days)

    def window_open(self, window: datetime) -> bool:
        """Whether a window still takes events: not older than the retention horizon."""
        today = self.clock().replace(hour=0, minute=0, second=0, microsecond=0)
        return window >= today - self.retention

    def salt_for(self, window: datetime) -> bytes | None:
        return self.salts.get(window) if self.window_open(window) else None

    def apply_retention(self) -> tuple[int, int]:
        """Delete raw rows and salts of windows past the retention horizon."""
        today = self.clock().replace(hour=0, minute=0, second=0, microsecond=0)
        cutoff = today - self.retention
        rows = self.store.delete_windows_before(int(cutoff.timestamp()))
        salts = self.salts.destroy_before(cutoff)
        return rows, salts


NODE = web.AppKey("node", Node)


def data_paths(settings: NodeSettings) -> dict[str, Path]:
    """Where a node keeps its files under its data dir."""
    root = settings.data_dir
    return {
        "db": root / "node.duckdb",
        "key": root / "keys" / "signing.key",
        "salts": root / "salts",
    }


def open_node(settings: NodeSettings, *, clock: Clock = utc_now) -> Node:
    """Open (creating on first start) everything a node needs; no server involved."""
    catalog = load_catalog(settings.catalog)
    paths = data_paths(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    key = load_or_create(paths["key"])
    store = Store(paths["db"], catalog)
    salts = SaltKeeper(paths["salts"])
    metrics = NodeMetrics(rows=store.row_count, db_bytes=store.size_bytes)
    writer = Writer(store, max_rows=settings.commit_max_rows, observe=metrics.observe_commit)
    geo = GeoLocator(settings.geoip_database)
    node_ref: list[Node] = []
    ingestor = Ingestor(
        settings=settings,
        privacy=PrivacyFilter(catalog, clock_skew=timedelta(seconds=settings.clock_skew_seconds)),
        salts=lambda window: node_ref[0].salt_for(window),
        writer=writer,
        geo=geo,
        limiter=RateLimiter(settings.rate_limit.requests_per_second, settings.rate_limit.burst),
        metrics=metrics,
        clock=clock,
    )
    node = Node(settings, catalog, key, store, salts, writer, geo, ingestor, metrics, clock)
    node_ref.append(node)
    return node


def close_node(node: Node) -> None:
    node.geo.close()
    node.store.close()


def _cors_allowed(settings: NodeSettings, origin: str) -> bool:
    return "*" in settings.cors_origins or origin in settings.cors_origins


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def cors_middleware(settings: NodeSettings) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
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
                raise Forbidden("origin is not allowed to send events", slug="origin-not-allowed")
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "Content-Type"
            response.headers["Access-Control-Max-Age"] = "86400"
        elif not allowed:
            raise Forbidden("origin is not allowed to send events", slug="origin-not-allowed")
        else:
            response = await handler(request)
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
        return response

    return middleware


async def _events(request: web.Request) -> web.Response:
    return await post_events(request, request.app[NODE].ingestor)


async def _plausible(request: web.Request) -> web.Response:
    node = request.app[NODE]
    return await post_plausible_event(request, node.ingestor, node.catalog)


async def _preflight(request: web.Request) -> web.Response:
    return web.Response(status=204)  # the CORS middleware adds the headers


async def _healthz(request: web.Request) -> web.Response:
    node = request.app[NODE]
    return web.json_response(
        {"status": "ok", "key_id": node.key.public.key_id, "catalog": node.catalog.hash}
    )


async def _metrics(request: web.Request) -> web.Response:
    body = await asyncio.to_thread(request.app[NODE].metrics.render)
    return web.Response(body=body, content_type="text/plain", charset="utf-8")


async def _client_script(request: web.Request) -> web.Response:
    script = resources.files("node").joinpath("static/liberation.js").read_bytes()
    return web.Response(
        body=script,
        content_type="application/javascript",
        charset="utf-8",
        headers={"Cache-Control": "public, max-age=3600"},
    )


async def _local_summary(request: web.Request) -> web.Response:
    node = request.app[NODE]
    since = node.clock() - timedelta(hours=48)
    rows = await asyncio.to_thread(
        node.store.hourly_summary, node.catalog.k_min, int(since.timestamp())
    )
    cells = [
        {
            "hour": datetime.fromtimestamp(hour, UTC).strftime("%Y-%m-%dT%H:00:00Z"),
            "app": app,
            "action": action,
            "events": n,
        }
        for hour, app, action, n in rows
    ]
    return web.json_response(
        {
            "node": node.key.public.key_id,
            "catalog": node.catalog.hash,
            "k_min": node.catalog.k_min,
            "note": "hourly event counts of the last 48 hours; cells under k_min are not shown",
            "cells": cells,
        },
        headers={"Cache-Control": "public, max-age=60"},
    )


async def _retention_loop(node: Node) -> None:
    while True:
        try:
            rows, salts = await asyncio.to_thread(node.apply_retention)
            if rows or salts:
                log.info("retention", extra={"rows_deleted": rows, "salts_destroyed": salts})
        except Exception as exc:  # noqa: BLE001 - keep the loop alive, say why
            log.error("retention failed: %s", type(exc).__name__)
        await asyncio.sleep(RETENTION_INTERVAL_SECONDS)


def create_app(settings: NodeSettings, *, clock: Clock = utc_now) -> web.Application:
    """Build the node's aiohttp application; resources open in cleanup_ctx, not at import."""
    app = web.Application(
        middlewares=[problem_middleware, cors_middleware(settings)],
        client_max_size=settings.max_body_bytes,
    )

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        node = await asyncio.to_thread(open_node, settings, clock=clock)
        app[NODE] = node
        await node.writer.start()
        retention = asyncio.create_task(_retention_loop(node), name="retention")
        log.info("node ready", extra={"key_id": node.key.public.key_id, "catalog": node.catalog.hash})
        yield
        retention.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await retention
        await node.writer.stop()
        close_node(node)

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/v1/events", _events)
    app.router.add_route("OPTIONS", "/v1/events", _preflight)
    app.router.add_post("/api/event", _plausible)
    app.router.add_route("OPTIONS", "/api/event", _preflight)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/js/liberation.js", _client_script)
    app.router.add_get("/v1/local/summary", _local_summary)
    return app
