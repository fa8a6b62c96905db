"""A seeded discrete Laplace sampler, for tests only: reproducible snapshots without OpenDP.

It lives under tests/ so that no config or CLI path of the product can reach
it; the product's only sampler is runtime.dp.opendp_laplace.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence


def seeded_laplace(seed: int) -> "SeededLaplace":
    return SeededLaplace(seed)


class SeededLaplace:
    """X = G1 - G2 with G ~ Geometric(1 - a) on {0, 1, ...}: discrete Laplace of scale b."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def _geometric(self, a: float) -> int:
        u = 1.0 - self._rng.random()  # (0, 1]
        return int(math.floor(math.log(u) / math.log(a)))

    def __call__(self, counts: Sequence[int], scale: float) -> list[int]:
        a = math.exp(-1.0 / scale)
        return [c + self._geometric(a) - self._geometric(a) for c in counts]
