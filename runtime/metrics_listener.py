"""The operator's listener: `/metrics` on a socket of its own, never on a service's public port.

Exact counters move with every event a person sends, within milliseconds: anyone who can poll
them learns who used a tool when (epsilon = infinity for a session-day). So they are served on a
separate listener, loopback by default, its own port (Prometheus's convention), with a routing
table that holds nothing else but the service's operator pages (a node's setup check); the public
app has no `/metrics` route at all.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from aiohttp import web

from protocol.errors import LiberationError
from runtime.connections import CONNECTIONS

log = logging.getLogger("liberation.metrics")

CONTENT_TYPE = "text/plain"


@dataclass(frozen=True)
class MetricsListener:
    """Where a service's metrics are served: the bound URL, or None when the listener is off."""

    url: str | None


METRICS_LISTENER = web.AppKey("metrics_listener", MetricsListener)


def metrics_app(render: Callable[[], bytes], pages: Sequence[web.RouteDef] = ()) -> web.Application:
    """An app with `GET /metrics` (the text exposition that `render` produces) and the operator's `pages`."""

    async def metrics(request: web.Request) -> web.Response:
        body = await asyncio.to_thread(render)
        return web.Response(body=body, content_type=CONTENT_TYPE, charset="utf-8")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_routes(pages)
    return app


def _url(host: str, port: int) -> str:
    return f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"


def add_metrics_listener(
    app: web.Application,
    *,
    service: str,
    host: str,
    port: int | None,
    render: Callable[[web.Application], Callable[[], bytes]],
    pages: Callable[[web.Application], Sequence[web.RouteDef]] | None = None,
) -> None:
    """Serve `render(app)` on host:port while `app` runs (after the contexts added before this one),
    followed by the metrics of the app's connection cap if it has one.

    `pages(app)`: more routes for the operator only (exact, live figures: never on a public port).
    `port` 0 picks a free port; None leaves metrics unserved. The bound URL is logged as
    `metrics_url` and kept in `app[METRICS_LISTENER]`.
    """

    async def listener(app: web.Application) -> AsyncIterator[None]:
        if port is None:
            app[METRICS_LISTENER] = MetricsListener(None)
            yield
            return
        service_metrics = render(app)
        cap = app.get(CONNECTIONS)  # the public listener's cap, when served by liberation.server

        def everything() -> bytes:
            return service_metrics() + (cap.render() if cap is not None else b"")

        routes = pages(app) if pages is not None else ()
        runner = web.AppRunner(metrics_app(everything, routes), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise LiberationError(
                f"cannot listen for metrics on {_url(host, port)}: {os.strerror(exc.errno) if exc.errno else exc} "
                "(set metrics_port: "
                "0 picks a free port, off serves no metrics)"
            ) from None
        bound_host, bound_port = runner.addresses[0][:2]
        url = _url(bound_host, bound_port)
        app[METRICS_LISTENER] = MetricsListener(url)
        log.info("metrics listening", extra={"service": service, "metrics_url": url})
        try:
            yield
        finally:
            await runner.cleanup()

    app.cleanup_ctx.append(listener)
