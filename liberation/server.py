"""Run an aiohttp app until SIGINT/SIGTERM, logging the bound URL (so `--port 0` can be found)."""

from __future__ import annotations

import asyncio
import logging
import signal
import traceback

from aiohttp import web

from protocol.logs import RouteAccessLogger

log = logging.getLogger("liberation.server")

KEEPALIVE_TIMEOUT_SECONDS = 15.0
"""Idle keep-alive connections close after this; it also bounds a request's headers, which aiohttp
times from the connection's start (or its last response). aiohttp's default is an hour."""
LINGERING_SECONDS = 2.0
"""After an early error (408, 413), how long the unread rest of a body is drained before closing."""


class _NoAddress(logging.Filter):
    """aiohttp's server log says `Error handling request from <peer address>` and its exceptions
    quote the offending bytes: keep the message without the address, the exception's type and frames."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg, record.args = str(record.msg).replace("%s", "a client"), ()
        if record.exc_info and record.exc_info[0] is not None:
            kind, _, frames = record.exc_info
            record.msg = f"{record.msg}: {kind.__name__}\n{''.join(traceback.format_tb(frames))}"
            record.exc_info, record.exc_text = None, None
        return True


def _server_logger(name: str) -> logging.Logger:
    logger = logging.getLogger(f"liberation.{name}.server")
    if not any(isinstance(f, _NoAddress) for f in logger.filters):
        logger.addFilter(_NoAddress())
    return logger


async def _serve(app: web.Application, host: str, port: int, name: str) -> None:
    runner = web.AppRunner(
        app,
        access_log_class=RouteAccessLogger,
        access_log=logging.getLogger(f"liberation.{name}.access"),
        logger=_server_logger(name),
        handle_signals=False,
        keepalive_timeout=KEEPALIVE_TIMEOUT_SECONDS,
        lingering_time=LINGERING_SECONDS,
    )
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
