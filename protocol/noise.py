"""The noise the protocol declares: discrete Laplace of scale b, its parameter and its variance.

A node states each metric's scale and variance in its snapshot; the hub checks them and sums
variances; presence tests need the distribution. One definition for all of them.
"""

from __future__ import annotations

import math


def laplace_parameter(scale: float) -> float:
    """a = exp(-1/b): P(Z = z) is proportional to a^|z| for a discrete Laplace of scale b."""
    return math.exp(-1.0 / scale)


def laplace_variance(scale: float) -> float:
    """Variance of one discrete Laplace draw of scale b: 2a / (1 - a)^2."""
    a = laplace_parameter(scale)
    return 2 * a / (1 - a) ** 2
