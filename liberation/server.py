"""Run an aiohttp app until SIGINT/SIGTERM, logging the bound URL (so `--port 0` can be found)."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from protocol.logs import RouteAccessLogger

log = logging.getLogger("liberation.server")


async def _serve(app: web.Application, host: str, port: int, name: str) -> None:
    runner = web.AppRunner(app, access_log_class=RouteAccessLogger, access_log=logging.getLogger(f"liberation.{name}.access"), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    url = f"http://{bound_host}:{bound_port}" if ":" not in bound_host else f"http://[{bound_host}]:{bound_port}"
    log.info("listening", extra={"service": name, "url": url})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("stopping", extra={"service": name})
        await runner.cleanup()


def run_app(app: web.Application, host: str, port: int, name: str) -> None:
    """Serve `app` on host:port (0 = any free port) until a signal asks to stop."""
    asyncio.run(_serve(app, host, port, name))
