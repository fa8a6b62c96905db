"""Structured JSON logs for node and hub, and an access logger that never sees a client address.

aiohttp's default access log format starts with `%a`, the peer address: both
servers replace it with `AccessTally`, which counts requests per method, route
pattern (not the raw path or query) and status, and logs the counts and
durations once a minute, and nothing else.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import Any, TextIO

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (seconds, UTC), level, logger, message, extras."""

    def __init__(self) -> None:
        super().__init__()
        self._stamp: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        # Many lines can fall in one second: the time text is made once per second.
        second = int(record.created)
        if self._stamp[0] != second:
            self._stamp = (second, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second)))
        entry: dict[str, Any] = {
            "time": self._stamp[1],
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Send every `liberation.*` log line as JSON to `stream` (stderr by default)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("liberation")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    # The lines carry none of the caller's file and line, thread or process, so the
    # records need not look them up: a quarter of an access-log line's cost (the
    # logging HOWTO's "Optimization" section names these switches).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def _route_of(request: web.BaseRequest) -> str:
    """The route pattern a request was matched to, or "?" (no route, or never routed)."""
    try:
        match_info = getattr(request, "match_info", None)
    except AssertionError:
        # A request aiohttp answered itself (a malformed request line or header: 400)
        # never reached routing, and aiohttp asserts on its missing match_info.
        return "?"
    if match_info is None or match_info.route.resource is None:
        return "?"
    return str(match_info.route.resource.canonical)


class AccessTally:
    """The access log as a tally: requests counted per (method, route, status), one line each per period.

    A line per request would log the second at which someone used a tool: their
    event's time, far finer than the hour the store keeps (docs/privacy.md). It
    was also the biggest single cost of a one-event request after aiohttp's own.
    So each period (60 s) gives one "requests" line per method, route pattern
    and status, with the count and the mean and longest duration. A 5xx answer
    still gets a line of its own at once: the operator must see a failure now.
    Route patterns only: no address, no query, no header is ever read.
    """

    def __init__(self, logger: logging.Logger, *, period_seconds: float = 60.0) -> None:
        self.logger = logger
        self.period_seconds = period_seconds
        self._counts: dict[tuple[str, str, int], list[float]] = {}  # key -> [count, total s, longest s]
        self._timer: asyncio.TimerHandle | None = None

    def add(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request (and log it at once if it is a 5xx)."""
        if status >= 500:
            self.logger.warning(
                "request",
                extra={"method": method, "route": route, "status": status, "ms": round(seconds * 1000, 2)},
            )
        key = (method, route, status)
        entry = self._counts.get(key)
        if entry is None:
            if not self._counts:
                self._timer = asyncio.get_running_loop().call_later(self.period_seconds, self.flush)
            self._counts[key] = [1, seconds, seconds]
        else:
            entry[0] += 1
            entry[1] += seconds
            if seconds > entry[2]:
                entry[2] = seconds

    def flush(self) -> None:
        """Log the period's lines now (the timer, and the server's cleanup)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        counts, self._counts = self._counts, {}
        for (method, route, status), (count, total, longest) in sorted(counts.items()):
            self.logger.info(
                "requests",
                extra={
                    "method": method,
                    "route": route,
                    "status": status,
                    "count": int(count),
                    "ms_mean": round(total / count * 1000, 2),
                    "ms_max": round(longest * 1000, 2),
                    "period_s": self.period_seconds,
                },
            )

    def logger_class(self) -> type[AbstractAccessLogger]:
        """An aiohttp access-logger class feeding this tally (aiohttp makes one per connection)."""
        tally = self

        class TalliedAccessLogger(AbstractAccessLogger):
            def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
                tally.add(request.method, _route_of(request), response.status, time)

            @property
            def enabled(self) -> bool:
                # WARNING, not INFO: a 5xx line is still logged at a quieter level.
                return tally.logger.isEnabledFor(logging.WARNING)

        return TalliedAccessLogger
