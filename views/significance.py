"""When a merged cell is shown as present: its sum clears a false-discovery bound over every snapshot in it.

Every node snapshot noises every cell of a metric's public domain with discrete Laplace
(P(Z = z) proportional to a^|z|, a = exp(-1/b)) and suppresses none, so a merged cell over n
snapshots is its true count plus S = Z_1 + ... + Z_n. A discrete Laplace is the difference of
two geometric variables, so S = K_1 - K_2 with K_i negative binomial NB(n, a), and its tail is
exact: P(S >= t) = sum_k P(K_2 = k) P(K_1 >= t + k). A cell is present when its sum is at least
the smallest t with P(S >= t) <= FALSE_CELLS / D, D the catalog's total number of cells: with
every cell empty, fewer than FALSE_CELLS cells are expected to show, over any number of nodes
and windows (the per-snapshot thresholds this replaces expected one false cell per metric *per
snapshot*, and the hub showed any cell one of them published).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from functools import lru_cache
from statistics import NormalDist

import numpy as np

from protocol.catalog import Catalog, MetricSpec
from protocol.noise import laplace_parameter, laplace_variance

FALSE_CELLS = 0.05
"""Expected cells shown as present though empty, over all of a catalog's cells (so over any view)."""


def draws(variance: float, scale: float) -> int:
    """How many draws of `scale` a merged variance sums (at least 1 for a present cell)."""
    return max(1, round(variance / laplace_variance(scale)))


EXACT_DRAWS = 100
"""Up to this many draws the tail is summed exactly; beyond, Cornish-Fisher (within 0.1 % of exact from 100 on)."""


@lru_cache(maxsize=4096)
def noise_threshold(scale: float, n: int, p: float) -> int:
    """The smallest t >= 0 with P(S >= t) <= p, S the sum of n discrete Laplace draws of `scale`."""
    if n > EXACT_DRAWS:
        return _cornish_fisher(scale, n, p)
    return _exact(scale, n, p)


def _cornish_fisher(scale: float, n: int, p: float) -> int:
    # S is symmetric: the expansion's first correction is the excess kurtosis
    # g2 = k4 / k2^2 = (1 + 4a + a^2) / (2 a n) (cumulants of a difference of two geometrics).
    a = laplace_parameter(scale)
    z = NormalDist().inv_cdf(1 - p)
    g2 = (1 + 4 * a + a * a) / (2 * a * n)
    x = z + (z**3 - 3 * z) * g2 / 24
    return math.ceil(x * math.sqrt(n * laplace_variance(scale))) + 1


def _exact(scale: float, n: int, p: float) -> int:
    a = laplace_parameter(scale)
    mean, sd = n * a / (1 - a), math.sqrt(n * a) / (1 - a)
    lo, hi = max(0, int(mean - 12 * sd - 60 / (1 - a))), int(mean + 12 * sd + 60 / (1 - a)) + 2
    k = np.arange(lo, hi, dtype=np.float64)
    # log P(K = k) = lgamma(k + n) - lgamma(n) - lgamma(k + 1) + n log(1 - a) + k log a, by recurrence from lo.
    first = math.lgamma(lo + n) - math.lgamma(n) - math.lgamma(lo + 1) + n * math.log1p(-a) + lo * math.log(a)
    steps = np.log(a * (k[:-1] + n) / (k[:-1] + 1))
    log_pmf = np.concatenate(([first], first + np.cumsum(steps)))
    pmf = np.exp(log_pmf)
    survival = np.cumsum(pmf[::-1])[::-1]  # P(K >= k), summed from the top: exact in the far tail
    size = len(pmf)

    def tail(t: int) -> float:
        # P(K1 - K2 >= t) = sum over k2 of P(K2 = k2) P(K1 >= k2 + t), both on [lo, hi).
        if t >= size:
            return 0.0
        if t <= -size:
            return 1.0
        if t >= 0:
            return float(np.dot(pmf[: size - t], survival[t:]))
        return float(np.dot(pmf[-t:], survival[: size + t]) + pmf[: -t].sum())

    low, high = 0, size
    while low < high:
        mid = (low + high) // 2
        if tail(mid) <= p:
            high = mid
        else:
            low = mid + 1
    return low


def presence_threshold(catalog: Catalog, metric: MetricSpec, variance: float, scale: float | None = None) -> int:
    """The least merged value of a cell of `metric`, with noise `variance`, shown as present (k_min included).

    The noise is a sum of discrete Laplace draws of `scale`: the community snapshots' by default,
    the keepers' for a federation round's aggregate (one draw per keeper).
    """
    return presence_thresholds(catalog, metric, (variance,), scale)[0]


def presence_thresholds(
    catalog: Catalog, metric: MetricSpec, variances: Iterable[float], scale: float | None = None
) -> list[int]:
    """`presence_threshold` of each variance: the catalog's cells counted once for all of them."""
    p = FALSE_CELLS / total_cells(catalog)
    scale = catalog.scale(metric) if scale is None else scale
    return [max(catalog.k_min, noise_threshold(scale, draws(variance, scale), p)) for variance in variances]


def total_cells(catalog: Catalog) -> int:
    """The number of cells of all of a catalog's metrics: what FALSE_CELLS is spread over."""
    return _total_cells(catalog.hash, lambda: sum(catalog.domain_size(m) for m in catalog.metrics))


_TOTALS: dict[str, int] = {}
"""total_cells by catalog hash (content-addressed, so never stale): views ask for it per cell and per country."""


def _total_cells(catalog_hash: str, count: Callable[[], int]) -> int:
    total = _TOTALS.get(catalog_hash)
    if total is None:
        total = _TOTALS.setdefault(catalog_hash, count())
    return total
