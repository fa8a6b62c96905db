"""An empirical privacy audit: neighbouring datasets, many releases, a Clopper-Pearson bound on epsilon.

D holds a crowd plus one adversarial session with maximal contributions; D'
is D without that session. Both go through the real aggregation SQL; the
audited cell is then released many times through the real OpenDP sampler at
the catalog's scale (vectorised: one call draws all releases). With
S = {release >= true count under D}, P_D(S) / P_D'(S) <= e^epsilon for an
epsilon-DP release, so ln(lower CP bound of P_D(S) / upper CP bound of
P_D'(S)) is a lower bound on the real epsilon at 99.9% confidence. The audit
fails when that bound exceeds the declared epsilon; it catches a broken clamp.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from scipy.stats import beta

from node.aggregate import true_tables
from protocol.catalog import Catalog, load_catalog
from runtime.dp import opendp_laplace
from tests.factories import WINDOW, ev, store_with

CATALOG = load_catalog()
W = int(WINDOW.timestamp())
RELEASES = 200_000
ALPHA = 0.001  # 99.9% intervals: a false alarm needs a 4.6-sigma fluke


def clopper_pearson(successes: int, trials: int) -> tuple[float, float]:
    """Two-sided (1 - ALPHA) Clopper-Pearson interval for a binomial proportion."""
    lo = 0.0 if successes == 0 else float(beta.ppf(ALPHA / 2, successes, trials - successes + 1))
    hi = 1.0 if successes == trials else float(beta.ppf(1 - ALPHA / 2, successes + 1, trials - successes))
    return lo, hi


def epsilon_lower_bound(with_adversary: int, without: int, scale: float) -> float:
    """Release the cell RELEASES times under D and D' and bound epsilon from below."""
    threshold = with_adversary
    hits_d = sum(1 for x in opendp_laplace([with_adversary] * RELEASES, scale) if x >= threshold)
    hits_d1 = sum(1 for x in opendp_laplace([without] * RELEASES, scale) if x >= threshold)
    p_d_low, _ = clopper_pearson(hits_d, RELEASES)
    _, p_d1_high = clopper_pearson(hits_d1, RELEASES)
    return math.log(p_d_low / p_d1_high)


def crowd() -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for s in range(60):
        out += [ev(f"c{s}", "cognitive-debt-assessment", "answer", s + j, questions_answered=12) for j in range(4)]
        out.append(ev(f"r{s}", "runway-calculator", "calculate", s, runway_months=8))
    return out


def adversary() -> list[dict[str, object]]:
    """A session that hammers one cell of each audited metric."""
    out = [ev("adv", "cognitive-debt-assessment", "answer", i % 600, questions_answered=12) for i in range(10_000)]
    out.insert(0, ev("adv", "runway-calculator", "calculate", 0, runway_months=8))
    return out


def cell_counts(tmp: Path, metric: str, label: str, bounding: Catalog) -> tuple[int, int]:
    spec = bounding.metric(metric)
    index = bounding.domain(spec.dimensions[0]).index(label)
    with_adv = true_tables(store_with(tmp / "d", crowd() + adversary(), bounding).cursor(), bounding, W, metrics=[spec])
    without = true_tables(store_with(tmp / "d1", crowd(), bounding).cursor(), bounding, W, metrics=[spec])
    return with_adv[metric][index], without[metric][index]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("metric", "label"),
    [("runway_months", "6..9"), ("usage_events", "cognitive-debt-assessment/answer")],
)
def test_audit_bound_stays_under_the_declared_epsilon(tmp_path: Path, metric: str, label: str) -> None:
    spec = CATALOG.metric(metric)
    with_adv, without = cell_counts(tmp_path, metric, label, CATALOG)
    assert with_adv - without == spec.cell_cap  # the adversary really moves the cell, by the clamp
    bound = epsilon_lower_bound(with_adv, without, CATALOG.scale(spec))
    assert bound <= CATALOG.epsilon(spec), f"{metric}: audited epsilon >= {bound:.3f}"
    assert bound > -0.05  # the test has power: the estimate sits near the claim, not at nothing


@pytest.mark.slow
def test_audit_catches_a_broken_clamp(tmp_path: Path) -> None:
    # The bug: the SQL clamps usage_events at 60 per cell while the noise is
    # calibrated for the declared clamp of 2 (sensitivity k*c = 6).
    declared = CATALOG.metric("usage_events")
    broken_metrics = tuple(
        m.model_copy(update={"cell_cap": 60}) if m.name == "usage_events" else m for m in CATALOG.metrics
    )
    broken = CATALOG.model_copy(update={"metrics": broken_metrics})
    with_adv, without = cell_counts(tmp_path, "usage_events", "cognitive-debt-assessment/answer", broken)
    assert with_adv - without == 60
    bound = epsilon_lower_bound(with_adv, without, CATALOG.scale(declared))
    assert bound > CATALOG.epsilon(declared), "the audit did not notice a clamp 30 times too loose"
