"""Bounds on a public listener's connections: a cap below the open-file limit, and quiet accept errors.

An idle socket costs a client nothing and the server one file descriptor. Past the process's
open-file limit accept() fails: asyncio logs a traceback for every failure (the review measured
20 MB in 20 s) and stops accepting for a second at a time, so every client waits. So the listener
holds at most `limit` connections, a limit that fits under the open-file limit; a connection
arriving at the cap closes the longest-open idle one (nginx drains its reusable connections the
same way), or is itself closed at once if every connection has a request in flight. Refusing the
newcomer instead would let `limit` idle sockets lock everyone out until the keep-alive timeout.
If accept() fails all the same, `AcceptErrorLog` makes it one JSON line a minute with a count.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from runtime.standard_metrics import no_created_series

LISTEN_BACKLOG = 128
"""Pending connections the kernel queues; asyncio also accepts up to this many in one go."""
RESERVED_FILES = 64 + LISTEN_BACKLOG
"""Descriptors kept free of client connections: the stores, stage files, listeners, outgoing pushes
(a node has about a dozen open), and one accept burst, which asyncio takes before the cap sees it."""
ACCEPT_ERROR = "socket.accept() out of system resource"
"""The message of asyncio's exception-handler context when accept() fails with EMFILE, ENFILE, ENOBUFS, ENOMEM."""


def fit_open_files(wanted: int) -> tuple[int, int]:
    """The connection cap that fits the open-file limit, and that limit, raising the soft limit toward
    `wanted + RESERVED_FILES` first (no privilege is needed up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + RESERVED_FILES
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (ValueError, OSError):
                pass  # a sandbox may forbid it: the cap below still fits what there is
    if soft == resource.RLIM_INFINITY:
        return wanted, soft
    return max(1, min(wanted, soft - RESERVED_FILES)), soft


class _Refused(asyncio.Protocol):
    """A connection over the cap with no idle one to close: closed as soon as it is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


def _busy(handler: Any) -> bool:
    # aiohttp sets this around a request's handler and its response (its own graceful shutdown
    # waits on it). Should a later version drop it, every connection counts as busy: newcomers
    # at the cap are refused, and nothing in flight is ever cut.
    return bool(getattr(handler, "_request_in_progress", True))


class _Counted(asyncio.Protocol):
    """aiohttp's protocol of one connection, passed every transport event; tells the cap when it is made and lost."""

    __slots__ = ("_inner", "_cap", "evicted")

    def __init__(self, inner: Any, cap: ConnectionCap) -> None:
        self._inner = inner
        self._cap = cap
        self.evicted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._cap._made(self)
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cap._lost(self)
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return bool(self._inner.eof_received())

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def idle(self) -> bool:
        """Open, and no request being handled or answered (waiting for one, or for the rest of its headers)."""
        transport = self._inner.transport
        return transport is not None and not transport.is_closing() and not _busy(self._inner)

    def evict(self) -> None:
        self.evicted = True
        self._inner.force_close()


class ConnectionCap:
    """The listener's protocol factory: hands connections to aiohttp's server, at most `limit` open at once.

    Counted from the moment asyncio creates a connection's protocol (an accept burst creates
    many before any is made) until the connection is lost; one the cap closed stops counting
    at once, since its descriptor is released within the loop's next turn.
    """

    def __init__(self, limit: int, *, prefix: str = "liberation_") -> None:
        """`prefix`: the service's metric prefix (liberation_node_, liberation_hub_)."""
        no_created_series()
        self.limit = limit
        self._server: web.Server | None = None
        self._open: dict[_Counted, None] = {}  # made and not yet lost, oldest first
        self._pending = 0  # created, not yet made
        self._leaving = 0  # closed by the cap, not yet lost
        self.registry = CollectorRegistry(auto_describe=True)
        self._closed = Counter(
            f"{prefix}connections_closed",
            "Connections closed at the cap: the longest-open idle one, to make room (idle), "
            "or a newcomer when none was idle: every one busy, or arriving in the same burst (full)",
            ["reason"], registry=self.registry,
        )
        Gauge(
            f"{prefix}connections_open", "Client connections open on the public port", registry=self.registry
        ).set_function(self.count)
        Gauge(
            f"{prefix}connections_max",
            "The cap on client connections (max_connections, fitted to the open-file limit)",
            registry=self.registry,
        ).set(limit)

    def bind(self, server: web.Server) -> None:
        """Serve connections with `server` (an AppRunner's, once set up)."""
        self._server = server

    def count(self) -> int:
        """Connections that hold a place under the cap now."""
        return len(self._open) - self._leaving + self._pending

    def __call__(self) -> asyncio.BaseProtocol:
        assert self._server is not None, "bind() the cap to a server first"
        if self.count() >= self.limit and not self._make_room():
            self._closed.labels("full").inc()
            return _Refused()
        self._pending += 1
        return _Counted(self._server(), self)

    def _make_room(self) -> bool:
        """Close the longest-open idle connection; False if there is none (all busy, or not yet made)."""
        for conn in self._open:
            if not conn.evicted and conn.idle():
                conn.evict()
                self._leaving += 1
                self._closed.labels("idle").inc()
                return True
        return False

    def _made(self, conn: _Counted) -> None:
        self._pending -= 1
        self._open[conn] = None

    def _lost(self, conn: _Counted) -> None:
        del self._open[conn]
        if conn.evicted:
            self._leaving -= 1

    def render(self) -> bytes:
        """The cap's metrics, in Prometheus text format."""
        return generate_latest(self.registry)


CONNECTIONS = web.AppKey("connections", ConnectionCap)
"""The cap of the app's public listener, when it runs behind one (the metrics listener shows it)."""


class CappedSite(web.BaseSite):
    """aiohttp's TCP site with a ConnectionCap as its protocol factory."""

    __slots__ = ("_host", "_port", "_cap")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, cap: ConnectionCap) -> None:
        super().__init__(runner, backlog=LISTEN_BACKLOG)
        self._host, self._port, self._cap = host, port, cap

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None, "set the runner up first"
        self._cap.bind(server)
        self._server = await asyncio.get_running_loop().create_server(
            self._cap, self._host, self._port, backlog=LISTEN_BACKLOG, reuse_address=True
        )


class AcceptErrorLog:
    """An event loop's exception handler: asyncio's accept failures become one line per period with a count.

    asyncio logs each failure with a traceback and the listening socket's address, in plain
    text; under a descriptor shortage that is thousands of lines a second. Every other context
    goes to the loop's default handler.
    """

    def __init__(self, logger: logging.Logger, *, every_seconds: float = 60.0) -> None:
        self._log = logger
        self._every = every_seconds
        self._count = 0
        self._error = ""
        self._timer: asyncio.TimerHandle | None = None

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != ACCEPT_ERROR:
            loop.default_exception_handler(context)
            return
        exc = context.get("exception")
        code = exc.errno if isinstance(exc, OSError) else None
        self._error = errno.errorcode.get(code, "unknown") if code is not None else "unknown"
        if self._timer is None:
            self._emit(1)  # the first at once, then a count per period while they last
            self._timer = loop.call_later(self._every, self._flush, loop)
        else:
            self._count += 1

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._count:
            self._timer = None
            return
        self._emit(self._count)
        self._count = 0
        self._timer = loop.call_later(self._every, self._flush, loop)

    def _emit(self, count: int) -> None:
        self._log.error(
            "accept() failed: out of file descriptors or memory; new connections wait",
            extra={"error": self._error, "count": count, "period_seconds": self._every},
        )
