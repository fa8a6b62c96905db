"""An empirical privacy audit of a published round: one node's vector neighbouring, Clopper-Pearson on epsilon.

First the pipeline is pinned down: contributions built by the node's code, answered by the real
keeper (keeper/answer.py) with a recording sampler, combined as the hub combines them, give exactly
the participants' bounded sums plus the sampler's draws, at the catalog's federation scale. Then
the audit: node 1's bounded vector from D (a crowd plus one adversarial session with maximal
contributions, through the real aggregation SQL) or D' (without it); the other participants'
vectors fixed; the published cell released many times with one honest keeper's noise (OpenDP's
discrete Laplace at that scale; a colluding keeper's noise is known to the adversary and taken
off). The lower bound on epsilon must stay under the metric's federation epsilon, and it must
catch a keeper that adds half the noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from keeper.answer import Answerer
from keeper.identity import load_or_create_identity
from keeper.metrics import KeeperMetrics
from keeper.store import KeeperStore
from node.aggregate import true_tables
from protocol.keys import SigningKey
from protocol.rounds import (
    RoundRequest,
    build_contribution,
    combine,
    federation_vector,
    sign_request,
    verify_answer,
    verify_contribution,
)
from runtime.dp import opendp_laplace
from runtime.registry import Registry
from tests.factories import WINDOW, store_with
from tests.test_dp_audit import CATALOG, adversary, crowd, epsilon_lower_bound

W = int(WINDOW.timestamp())
DAY = 86_400


def test_a_round_is_the_bounded_sum_plus_each_keepers_draws_at_the_federation_scale(tmp_path: Path) -> None:
    hub = SigningKey.from_seed(b"h" * 32)
    store = KeeperStore(tmp_path / "keeper" / "keeper.duckdb")
    registry = Registry(store)
    identity = load_or_create_identity(tmp_path / "keeper")
    calls: list[tuple[list[int], float]] = []

    def recording(counts: list[int] | tuple[int, ...], scale: float) -> list[int]:
        assert not any(counts)  # a keeper noises zeros: its draws are its whole contribution
        noisy = opendp_laplace(list(counts), scale)
        calls.append((noisy, scale))
        return noisy

    answerer = Answerer(store=store, registry=registry, identity=identity, catalogs={CATALOG.hash: CATALOG},
                        hub_keys=[hub.public], metrics=KeeperMetrics(), max_bytes=1 << 26, skew_seconds=0,
                        now=lambda: W + 3 * DAY, sampler=recording)
    nodes = [SigningKey.from_seed(bytes([i + 1]) * 32) for i in range(3)]
    for i, node in enumerate(nodes):
        registry.enroll(f"n{i}", node.public)
    d = store_with(tmp_path / "d", crowd() + adversary())
    xs = [federation_vector(CATALOG, true_tables(d.cursor(), CATALOG, W))]
    xs += [np.random.default_rng(i).integers(0, 40, CATALOG.federation_size).tolist() for i in range(2)]
    parts = sorted(
        (build_contribution(CATALOG, x, key=n, keepers=[identity.statement], window_start=W, window_end=W + DAY,
                            created=W + DAY) for n, x in zip(nodes, xs, strict=True)),
        key=lambda e: verify_contribution(e, max_size=1 << 20).contribution.node,
    )
    envelope, fresh = answerer.answer(sign_request(RoundRequest(CATALOG.hash, W, W + DAY, tuple(parts)), hub))
    assert fresh
    answer = verify_answer(envelope, max_size=1 << 24).answer
    total = combine([verify_contribution(p, max_size=1 << 20).contribution.y for p in parts], [answer.a],
                    CATALOG.federation_size)
    drawn = np.concatenate([np.array(noisy, dtype=np.int64) for noisy, _ in calls])
    assert np.array_equal(total - np.sum(xs, axis=0), drawn)
    assert [scale for _, scale in calls] == [CATALOG.federation_scale(m) for m in CATALOG.federation_metrics]
    assert answer.noise == {m.name: CATALOG.federation_scale(m) for m in CATALOG.federation_metrics}


def node_cell(tmp: Path, metric: str, label: str) -> tuple[int, int]:
    """Node 1's bounded count of one cell under D and under D' (the real aggregation SQL)."""
    spec = CATALOG.metric(metric)
    index = CATALOG.domain(spec.dimensions[0]).index(label)
    with_adv = true_tables(store_with(tmp / "d", crowd() + adversary()).cursor(), CATALOG, W, metrics=[spec])
    without = true_tables(store_with(tmp / "d1", crowd()).cursor(), CATALOG, W, metrics=[spec])
    return with_adv[metric][index], without[metric][index]


OTHERS = 1_234
"""The other participants' sum in the audited cell: a constant the adversary knows."""


@pytest.mark.slow
@pytest.mark.parametrize(("metric", "label"), [("runway_months", "6..9")])
def test_the_published_round_stays_within_the_federation_epsilon(tmp_path: Path, metric: str, label: str) -> None:
    """One metric: the round's bounding is the snapshot's (tests/test_dp_audit.py audits it per metric), its scale its own."""
    spec = CATALOG.metric(metric)
    with_adv, without = node_cell(tmp_path, metric, label)
    assert with_adv - without == spec.cell_cap  # the adversary moves the cell by the clamp
    bound = epsilon_lower_bound(OTHERS + with_adv, OTHERS + without, CATALOG.federation_scale(spec))
    assert bound <= CATALOG.federation_epsilon(spec), f"{metric}: audited epsilon >= {bound:.3f}"
    assert bound > -0.05  # the test has power: near the claim, not at nothing


@pytest.mark.slow
def test_the_audit_catches_a_keeper_adding_half_the_noise(tmp_path: Path) -> None:
    spec = CATALOG.metric("runway_months")
    with_adv, without = node_cell(tmp_path, "runway_months", "6..9")
    bound = epsilon_lower_bound(OTHERS + with_adv, OTHERS + without, CATALOG.federation_scale(spec) / 2)
    assert bound > CATALOG.federation_epsilon(spec), "the audit did not notice half the noise"
