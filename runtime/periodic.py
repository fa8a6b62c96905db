"""A service's periodic task: one step now and then every interval until told to stop, kept alive through failures."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable


async def every(
    interval: float, stop: asyncio.Event, name: str, step: Callable[[], Awaitable[object]], log: logging.Logger
) -> None:
    """Run `step` now and then every `interval` seconds until `stop` is set; a failed step is logged (by type only).

    A step already running is allowed to finish (it may be inside a DuckDB call
    in a worker thread), so shutdown never closes a store under it.
    """
    while not stop.is_set():
        try:
            await step()
        except Exception as exc:  # noqa: BLE001 - keep the loop alive, say why
            log.error("%s pass failed: %s", name, type(exc).__name__)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
