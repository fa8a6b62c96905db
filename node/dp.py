"""Differential privacy for snapshots: discrete Laplace noise from OpenDP, thresholds, the `other` fold.

Every cell of a metric's public domain is noised, zeros included, so the
release is pure epsilon-DP with no data-dependent choice of cells. Noise is
OpenDP's discrete Laplace on 64-bit integers (never floating-point `random`
or numpy draws: Mironov 2012). Thresholding and folding suppressed values
into `other` act on noisy values only: post-processing, no extra privacy cost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class NoisyMetric:
    """One metric after noise and thresholding, in wire order."""

    idx: tuple[int, ...]
    val: tuple[int, ...]
    other_idx: tuple[int, ...]
    other_val: tuple[int, ...]


def threshold_and_fold(noisy: Sequence[int], last_dim: int, threshold: int) -> NoisyMetric:
    """Keep cells >= threshold; fold the rest into the `other` cell of their prefix.

    `last_dim` is the size of the metric's last dimension: cell i belongs to
    prefix i // last_dim. An `other` cell is itself published only if it
    clears the threshold.
    """
    idx: list[int] = []
    val: list[int] = []
    folded: dict[int, int] = {}
    for i, value in enumerate(noisy):
        if value >= threshold:
            idx.append(i)
            val.append(value)
        else:
            prefix = i // last_dim
            folded[prefix] = folded.get(prefix, 0) + value
    other = sorted((p, v) for p, v in folded.items() if v >= threshold)
    return NoisyMetric(
        tuple(idx), tuple(val), tuple(p for p, _ in other), tuple(v for _, v in other)
    )
