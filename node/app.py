"""The node's app factory: the running node (node/service.py) opened in its lifecycle, its export and push tasks, its routes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from node.admin import NODE_OPERATIONS
from node.export import AdoptionRefused
from node.ingest import Clock, utc_now
from node.origins import cors_middleware
from node.read_routes import READ_ROUTES
from node.routes import INGEST, IngestTarget, add_ingest_routes
from node.service import NODE, Node, close_node, open_node
from node.settings import NodeSettings
from node.setupcheck import setup_routes
from protocol.windows import format_utc
from runtime.admin import add_admin_socket
from runtime.datadir import SERVICE_WAIT_SECONDS
from runtime.metrics_listener import add_metrics_listener
from runtime.periodic import every
from runtime.problems import problem_middleware
from runtime.version import liberation_version
from views.cors import views_cors_middleware
from views.dashboard import add_dashboard_routes

log = logging.getLogger("liberation.node")


async def _export_step(node: Node, session: aiohttp.ClientSession) -> None:
    await _adopt_hub_copies(node, session)
    keepers = node.publisher.keepers
    if keepers is not None and keepers.missing() and node.settings.push.hub_url:
        await keepers.fetch(session, node.settings.push.hub_url, node.settings.push.timeout_seconds)
    for window in await asyncio.to_thread(node.maintain):
        log.info("exported", extra={"window_start": format_utc(window)})


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
                      extra={"window_start": format_utc(entry.window_start)})


async def _export_loop(node: Node, stop: asyncio.Event) -> None:
    async with aiohttp.ClientSession() as session:
        await every(node.settings.export_interval_seconds, stop, "export", lambda: _export_step(node, session), log)


async def _push_loop(node: Node, stop: asyncio.Event) -> None:
    async with aiohttp.ClientSession() as session:
        await every(node.settings.push.interval_seconds, stop, "push", lambda: node.outbox.push_due(session), log)


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
    for path, handler in READ_ROUTES:
        app.router.add_get(path, handler)
    add_dashboard_routes(app)  # the node's own published view, same dashboard as the hub
    return app
