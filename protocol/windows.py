"""Window alignment: UTC days and ISO weeks (Monday 00:00 UTC), and window names on the command line and in URLs."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from protocol.errors import BadRequest, ProblemType

HOUR = 3_600
DAY = 86_400
WEEK = 7 * DAY
MONDAY = 4 * DAY
"""1970-01-05, the first Monday after the epoch (a Thursday): ISO weeks start at MONDAY + n * WEEK."""

WINDOW_LENGTHS: dict[str, int] = {"day": DAY, "week": WEEK}
"""The window lengths a catalog may declare, in seconds."""


def window_start(ts: int, window_seconds: int) -> int:
    """Start (unix seconds) of the window of `window_seconds` that holds `ts`.

    A day starts at 00:00 UTC (days align to the epoch); a week is an ISO week, from
    Monday 00:00 UTC. Any other length that divides a day aligns to the epoch.
    """
    offset = MONDAY if window_seconds == WEEK else 0
    return ts - (ts - offset) % window_seconds


def format_utc(ts: int) -> str:
    """`1795392000` -> `2026-11-23T00:00:00Z`: how documents and logs name a window's start or a published moment."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_window_start(ts: int, window_seconds: int) -> bool:
    """Whether `ts` starts a window of `window_seconds` (a UTC day, or an ISO week's Monday)."""
    return window_start(ts, window_seconds) == ts


_ISO_WEEK = re.compile(r"^(\d{4})-W(\d{2})$")


def parse_window(text: str, window_seconds: int | None = None) -> int:
    """`2026-11-23`, `2026-W48`, `2026-11-23T05` or `1795392000` -> the window's start (unix seconds, UTC).

    `2026-W48` is an ISO week (its Monday). With `window_seconds`, the start must also
    start a window of that length.
    """
    try:
        week = _ISO_WEEK.match(text)
        if week:
            ts = int(datetime.fromisocalendar(int(week[1]), int(week[2]), 1).replace(tzinfo=UTC).timestamp())
        elif text.isdigit():
            ts = int(text)
        else:
            if len(text) == 13:  # 2026-11-23T05
                text += ":00"
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            ts = int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())
    except ValueError:
        raise BadRequest(
            "a window is a date (2026-11-23), an ISO week (2026-W48), an hour (2026-11-23T05) or unix seconds",
            slug=ProblemType.INVALID_WINDOW,
        ) from None
    if not is_window_start(ts, window_seconds or HOUR):
        raise BadRequest("that is not the start of a window", slug=ProblemType.INVALID_WINDOW)
    return ts
