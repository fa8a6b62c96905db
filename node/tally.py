"""Today's ingest outcomes, in memory: events accepted, and refused by reason, since the UTC day began.

For the operator's setup check (node/setupcheck.py): counts only, no event,
no time finer than the day; gone at a restart (the page says since when).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

ACCEPTED = "accepted"


@dataclass(frozen=True)
class TallyReading:
    """Counts since `since`: the start of the UTC day, or the process's start if later."""

    since: datetime
    accepted: int
    refused: dict[str, int]


class DayTally:
    """Outcome -> count for the current UTC day; the first outcome of a new day starts afresh."""

    def __init__(self, clock: Callable[[], datetime]) -> None:
        self._clock = clock
        self._since = clock().astimezone(UTC)
        self._counts: Counter[str] = Counter()

    def _roll(self) -> datetime:
        now = self._clock().astimezone(UTC)
        if now.date() != self._since.date():
            self._since = now.replace(hour=0, minute=0, second=0, microsecond=0)
            self._counts.clear()
        return now

    def add(self, outcome: str, n: int = 1) -> None:
        """Count `n` events of `outcome`: ACCEPTED or a refusal's reason slug."""
        self._roll()
        self._counts[outcome] += n

    def read(self) -> TallyReading:
        self._roll()
        refused = {k: v for k, v in sorted(self._counts.items()) if k != ACCEPTED}
        return TallyReading(self._since.replace(second=0, microsecond=0), self._counts[ACCEPTED], refused)
