"""One ingest worker process: serves the ingest routes on the shared public port, proxies every other route to the main process.

Started by node/workers.py as `python -m liberation node worker`, it reads its
start-up document (settings, the main's Unix socket, the port) from stdin and
then keeps stdin open: end of file means the main process is gone, and the
worker stops rather than serve on without it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import aiohttp
from aiohttp import web

from liberation.server import make_runner, tune_gc, wait_for_signal
from node.app import cors_middleware
from node.forwarder import BASE, Forwarder, SaltCache
from node.geo import GeoLocator
from node.handoff import PREFIX, RowsChannel, rows_socket
from node.ingest import Clock, Ingestor, utc_now
from node.metrics import NodeMetrics
from node.privacy import PrivacyFilter
from node.ratelimit import RateLimiter
from node.routes import INGEST, IngestTarget, add_ingest_routes
from node.rows import RowLayout
from node.settings import NodeSettings
from protocol.catalog import load_catalog
from protocol.errors import NotFound, ServiceUnavailable, problem_middleware
from protocol.logs import configure_logging

log = logging.getLogger("liberation.node.worker")

# Not passed on in either direction: they describe one hop, not the message.
HOP_HEADERS = frozenset(
    h.lower()
    for h in ("Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
              "Transfer-Encoding", "Upgrade", "Content-Length", "Host")
)


@dataclass
class WorkerState:
    """What the worker's proxy needs: its session to the main process."""

    session: aiohttp.ClientSession


WORKER = web.AppKey("worker", WorkerState)


async def _proxy(request: web.Request) -> web.Response:
    """Any other route: the main process's answer, status, headers and body unchanged."""
    if request.path.startswith(PREFIX):
        raise NotFound("Not Found")  # the handoff routes are for workers, on the Unix socket only
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
    headers["Host"] = request.host
    body = await request.read()
    try:
        async with request.app[WORKER].session.request(
            request.method, BASE + request.rel_url.raw_path_qs, headers=headers, data=body or None,
            allow_redirects=False, auto_decompress=False,
        ) as resp:
            payload = await resp.read()
            answer = web.Response(status=resp.status, body=payload)
            for key, value in resp.headers.items():
                if key.lower() not in HOP_HEADERS:
                    answer.headers.add(key, value)
            return answer
    except (aiohttp.ClientError, OSError):
        raise ServiceUnavailable("the node is restarting; retry later", retry_after=5, slug="storage-unavailable") from None


def create_worker_app(settings: NodeSettings, socket_path: Path, *, clock: Clock = utc_now) -> web.Application:
    """The worker's aiohttp app: ingest routes served here, the rest proxied over `socket_path`."""
    app = web.Application(
        middlewares=[problem_middleware, cors_middleware(settings)],
        client_max_size=settings.max_body_bytes,
    )

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        catalog = load_catalog(settings.catalog)
        session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(socket_path), limit=256),
            timeout=aiohttp.ClientTimeout(total=120),
        )
        metrics = NodeMetrics(rows=lambda: 0, db_bytes=lambda: 0, db_memory=lambda: 0)  # ingest counters only: shipped to the main
        forwarder = Forwarder(
            session, RowsChannel(rows_socket(socket_path)), RowLayout(catalog), metrics, max_rows=settings.commit_max_rows
        )
        salts = SaltCache(session, settings.window_seconds)
        geo = GeoLocator(settings.geoip_database)
        workers = max(1, settings.ingest_workers)
        limits = settings.rate_limit
        ingestor = Ingestor(
            settings=settings,
            privacy=PrivacyFilter(
                catalog,
                clock_skew=timedelta(seconds=settings.clock_skew_seconds),
                window_seconds=settings.window_seconds,
            ),
            salts=salts.get,
            writer=forwarder,
            geo=geo,
            # Each worker keeps its own buckets: split the rate so that all of them together allow it.
            limiter=RateLimiter(limits.requests_per_second / workers, max(1, math.ceil(limits.burst / workers))),
            metrics=metrics,
            clock=clock,
            prefetch=salts.prefetch,
        )
        app[WORKER] = WorkerState(session)
        app[INGEST] = IngestTarget(ingestor, catalog)
        await forwarder.start()
        yield
        await forwarder.stop()
        await session.close()
        geo.close()

    app.cleanup_ctx.append(lifecycle)
    add_ingest_routes(app)
    app.router.add_route("*", "/{tail:.*}", _proxy)
    return app


async def _until_orphaned() -> None:
    """Return when stdin reaches end of file: the main process has exited (or was killed)."""
    loop = asyncio.get_running_loop()
    gone = asyncio.Event()

    def readable() -> None:
        try:
            if not os.read(sys.stdin.fileno(), 4096):
                gone.set()
        except OSError:
            gone.set()

    loop.add_reader(sys.stdin.fileno(), readable)
    try:
        await gone.wait()
    finally:
        loop.remove_reader(sys.stdin.fileno())


async def _serve(settings: NodeSettings, socket_path: Path, port: int, index: int) -> None:
    runner = make_runner(create_worker_app(settings, socket_path), "node")
    await runner.setup()
    site = web.TCPSite(runner, settings.host, port, reuse_address=True, reuse_port=True)
    await site.start()
    tune_gc()
    log.info("worker ready", extra={"worker": index})
    waits = [asyncio.ensure_future(wait_for_signal()), asyncio.ensure_future(_until_orphaned())]
    try:
        _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
    finally:
        log.info("worker stopping", extra={"worker": index})
        await runner.cleanup()


def run_worker() -> None:
    """`liberation node worker`: read the start-up line from stdin, serve until a signal or the main's exit."""
    start = json.loads(sys.stdin.buffer.readline())
    settings = NodeSettings.model_validate(start["settings"])
    configure_logging(settings.log_level)
    asyncio.run(_serve(settings, Path(start["socket"]), int(start["port"]), int(start["index"])))
