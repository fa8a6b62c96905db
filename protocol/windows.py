"""Window names on the command line and in URLs: a date, a date and hour, or unix seconds."""

from __future__ import annotations

from datetime import UTC, datetime

from protocol.errors import BadRequest, ProblemType

DAY = 86_400
HOUR = 3_600


def window_start(ts: int, window_seconds: int) -> int:
    """Start (unix seconds) of the window of `window_seconds` that holds `ts`: windows align to the epoch, so to UTC days."""
    return ts - ts % window_seconds


def parse_window(text: str, window_seconds: int | None = None) -> int:
    """`2026-11-23`, `2026-11-23T05` or `1795392000` -> the window's start (unix seconds, UTC).

    With `window_seconds`, the start must also be aligned to it.
    """
    try:
        if text.isdigit():
            ts = int(text)
        else:
            if len(text) == 13:  # 2026-11-23T05
                text += ":00"
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            ts = int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())
    except ValueError:
        raise BadRequest(
            "a window is a date (2026-11-23), an hour (2026-11-23T05) or unix seconds",
            slug=ProblemType.INVALID_WINDOW,
        ) from None
    if ts % (window_seconds or HOUR):
        raise BadRequest("that is not the start of a window", slug=ProblemType.INVALID_WINDOW)
    return ts
