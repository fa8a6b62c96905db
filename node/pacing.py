"""How background work on the node's store gives the cores back to requests: a policy, not storage.

Drains and folds run beside live ingest. After each slice of such work
(outside its transaction, with the write lock released) the store calls a
`Rest` with the slice's wall time; `Pacing` sleeps a multiple of it unless
the work has become urgent, so it never takes more than about a third of a
core for long, yet keeps up when the load outruns it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

Rest = Callable[[float], None]
"""Called between slices of background work with the last slice's wall time in seconds."""

PACE = 2.0
"""Rest this many times each slice's wall time: at most a third of a core."""


@dataclass(frozen=True, slots=True)
class Pacing:
    """Rest `factor` times each slice's wall time, unless `urgent()` says the work must catch up."""

    factor: float = PACE
    urgent: Callable[[], bool] = lambda: False

    def __call__(self, elapsed: float) -> None:
        if not self.urgent():
            time.sleep(self.factor * elapsed)
