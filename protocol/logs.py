"""Structured JSON logs for node and hub, and an access logger that never sees a client address.

aiohttp's default access log format starts with `%a`, the peer address: both
servers replace it with `RouteAccessLogger`, which logs method, route pattern
(not the raw path or query), status and duration, and nothing else.
"""

from __future__ import annotations

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
        # One line per request in the access log: the time text is made once per second.
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


class RouteAccessLogger(AbstractAccessLogger):
    """Access log lines with the route pattern and status only: no address, no query, no headers."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        route = "?"
        match_info = getattr(request, "match_info", None)
        if match_info is not None and match_info.route.resource is not None:
            route = match_info.route.resource.canonical
        self.logger.info(
            "request",
            extra={
                "method": request.method,
                "route": route,
                "status": response.status,
                "ms": round(time * 1000, 2),
            },
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
