"""Discrete Laplace noise from OpenDP, and its certified epsilon: the one sampler of nodes and share keepers.

A node noises its snapshots with it, a share keeper its round answers. Every cell of a
metric's public domain is noised, zeros included, and every
noisy cell is published, so the release is pure epsilon-DP with no
data-dependent choice of cells. Noise is OpenDP's discrete Laplace on 64-bit
integers (never floating-point `random` or numpy draws: Mironov 2012).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

NoiseSampler = Callable[[Sequence[int], float], list[int]]
"""Adds independent discrete Laplace noise of scale b to every count."""


@lru_cache(maxsize=64)
def _measurement(scale: float) -> Any:
    import opendp.prelude as dp

    dp.enable_features("contrib")
    space = dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64")
    return space >> dp.m.then_laplace(scale=scale)


def opendp_laplace(counts: Sequence[int], scale: float) -> list[int]:
    """OpenDP's discrete Laplace (i64 domain) over every count: the only sampler the product uses."""
    if not counts:
        return []
    return list(_measurement(float(scale))(list(counts)))


def privacy_loss(scale: float, sensitivity: int) -> float:
    """The epsilon OpenDP itself certifies for a release of this scale and L1 sensitivity."""
    return float(_measurement(float(scale)).map(sensitivity))
