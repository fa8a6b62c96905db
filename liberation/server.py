"""Run an aiohttp app behind a connection cap until SIGINT/SIGTERM, logging the bound URL (so `--port 0` can be found)."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import signal
import traceback

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_log import AccessLogger

from protocol.errors import LiberationError
from runtime.connections import (
    CONNECTIONS,
    AcceptErrorLog,
    CappedSite,
    ConnectionCap,
    fit_open_files,
)
from runtime.logs import AccessTally

log = logging.getLogger("liberation.server")

KEEPALIVE_TIMEOUT_SECONDS = 15.0
"""Idle keep-alive connections close after this; it also bounds a request's headers, which aiohttp
times from the connection's start (or its last response). aiohttp's default is an hour."""
LINGERING_SECONDS = 2.0
"""After an early error (408, 413), how long the unread rest of a body is drained before closing."""
GC_THRESHOLD = 50_000
"""Generation-0 threshold once serving (CPython's default is 700)."""


class _NoAddress(logging.Filter):
    """aiohttp's server log says `Error handling request from <peer address>` and its exceptions
    quote the offending bytes: keep the message without the address, the exception's type and frames.

    A malformed request (aiohttp's parser refused it and answered 400) is the client's fault, not
    the server's: no frames, and only at DEBUG; the access tally counts it under route "?"."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg, record.args = str(record.msg).replace("%s", "a client"), ()
        if record.exc_info and record.exc_info[0] is not None:
            kind, _, frames = record.exc_info
            record.exc_info, record.exc_text = None, None
            if issubclass(kind, HttpProcessingError):
                record.msg = f"{record.msg}: {kind.__name__} (a malformed request)"
                record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
                return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
            record.msg = f"{record.msg}: {kind.__name__}\n{''.join(traceback.format_tb(frames))}"
        return True


def _server_logger(name: str) -> logging.Logger:
    logger = logging.getLogger(f"liberation.{name}.server")
    if not any(isinstance(f, _NoAddress) for f in logger.filters):
        logger.addFilter(_NoAddress())
    return logger


def make_runner(app: web.Application, name: str, *, access_log: bool = True) -> web.AppRunner:
    """An AppRunner with the address-free access tally (or none) and the timeouts above."""
    tally = AccessTally(logging.getLogger(f"liberation.{name}.access")) if access_log else None
    if tally is not None:

        async def flush_tally(_app: web.Application) -> None:
            tally.flush()  # the last period's counts, at shutdown

        app.on_cleanup.append(flush_tally)
    return web.AppRunner(
        app,
        access_log_class=tally.logger_class() if tally is not None else AccessLogger,
        access_log=tally.logger if tally is not None else None,
        logger=_server_logger(name),
        handle_signals=False,
        keepalive_timeout=KEEPALIVE_TIMEOUT_SECONDS,
        lingering_time=LINGERING_SECONDS,
    )


def tune_gc() -> None:
    """Once the app is up: move what exists out of the collector's view and collect young objects less often.

    A request's objects (events, filtered rows, dicts) live until its answer, so
    default thresholds run collections that walk the whole heap again and again:
    about 20% of the event loop's time under load (docs/benchmarks.md at
    d557699).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 100)


class ListenError(LiberationError):
    """A listener could not be opened (the port taken, the address not this machine's)."""


def _hint(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return " (another process has that port: stop it, or choose another with --port; 0 picks a free one)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return " (that address is not one of this machine's: check --host)"
    if exc.errno == errno.EACCES:
        return " (ports below 1024 need privileges: use a higher one behind a reverse proxy)"
    return ""


def base_url(host: str, port: int) -> str:
    return f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"


async def wait_for_signal() -> None:
    """Return on SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _serve(app: web.Application, host: str, port: int, name: str, max_connections: int) -> None:
    # asyncio logs each failed accept() with a traceback: thousands of lines a second when out of files.
    asyncio.get_running_loop().set_exception_handler(AcceptErrorLog(log))
    limit, open_files = fit_open_files(max_connections)
    if limit < max_connections:
        log.warning(
            "max_connections lowered to fit the open-file limit: raise the limit (LimitNOFILE, ulimit -n)",
            extra={"service": name, "max_connections": limit, "open_file_limit": open_files},
        )
    cap = ConnectionCap(limit, prefix=f"liberation_{name}_")
    app[CONNECTIONS] = cap
    runner = make_runner(app, name)
    try:
        await runner.setup()  # opens the service's files, its metrics listener and admin socket
        site = CappedSite(runner, host, port, cap)
        try:
            await site.start()
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ListenError(f"cannot listen on {base_url(host, port)}: {reason}{_hint(exc)}") from None
        bound_host, bound_port = runner.addresses[0][:2]
        tune_gc()
        log.info("listening", extra={"service": name, "url": base_url(bound_host, bound_port), "max_connections": limit})
        await wait_for_signal()
    finally:
        log.info("stopping", extra={"service": name})
        await runner.cleanup()


def run_app(app: web.Application, host: str, port: int, name: str, *, max_connections: int) -> None:
    """Serve `app` on host:port (0 = any free port) until a signal asks to stop, with at most
    `max_connections` client connections open (fewer if the open-file limit is lower)."""
    asyncio.run(_serve(app, host, port, name, max_connections))
