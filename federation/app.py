"""The hub's app factory: the running hub (federation/service.py) opened in its lifecycle, its rounds task, its routes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from federation import admin
from federation.routes import ROUTES
from federation.service import HUB, Hub, Now, close_hub, open_hub
from federation.settings import HubSettings
from runtime.admin import add_admin_socket
from runtime.datadir import SERVICE_WAIT_SECONDS
from runtime.metrics_listener import add_metrics_listener
from runtime.periodic import every
from runtime.problems import problem_middleware
from runtime.service import add_routes
from runtime.version import liberation_version
from views.cors import views_cors_middleware
from views.dashboard import add_dashboard_routes

log = logging.getLogger("liberation.hub")


async def _round_loop(hub: Hub, stop: asyncio.Event) -> None:
    """Move rounds through their states every `rounds.interval_seconds` until `stop`."""
    async with aiohttp.ClientSession() as session:
        await every(hub.settings.rounds.interval_seconds, stop, "rounds", lambda: hub.rounds.step(session), log)


def create_app(settings: HubSettings, *, now: Now = time.time) -> web.Application:
    """Build the hub's aiohttp application; resources open in cleanup_ctx, not at import."""
    app = web.Application(
        middlewares=[views_cors_middleware(settings.views_cors_origins), problem_middleware],
        client_max_size=settings.max_snapshot_bytes + 1,
    )

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        hub = await asyncio.to_thread(open_hub, settings, now=now, wait_seconds=SERVICE_WAIT_SECONDS)
        app[HUB] = hub
        log.info("hub ready", extra={
            "key_id": hub.key.public.key_id, "admin_api": settings.admin_token is not None,
            "max_snapshot_bytes": hub.intake.max_bytes,
        })
        stop = asyncio.Event()
        rounds = asyncio.create_task(_round_loop(hub, stop), name="rounds")
        yield
        stop.set()
        await rounds
        close_hub(hub)

    app.cleanup_ctx.append(lifecycle)
    add_admin_socket(
        app, service="hub", version=liberation_version(), data_dir=settings.data_dir,
        target=lambda app: app[HUB], operations=admin.HUB_OPERATIONS,
    )
    add_metrics_listener(
        app, service="hub", host=settings.metrics_host, port=settings.metrics_port,
        render=lambda app: app[HUB].metrics.render,
    )
    add_routes(app, ROUTES)
    add_dashboard_routes(app)
    return app
