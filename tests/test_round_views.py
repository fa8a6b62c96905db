"""The hub's federation views take a window's federation metrics from its published round.

A round's aggregate carries one noise draw per keeper at the federation scale, so its cells are
tested for presence with that noise (views/significance.py), once, on the aggregate: a real
country shows, the empty ones fold into `other` with their noise, and the number of nodes is
the round's participants.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from federation.round_records import PublishedRounds
from federation.store import HubStore
from protocol.catalog import load_catalog
from protocol.noise import laplace_variance
from views.ranges import VIEWS, RoundRanges, StoreRanges
from views.significance import presence_threshold

CATALOG = load_catalog()
W = 1_795_392_000
DAY = 86_400


def publish(store: HubStore, aggregate: np.ndarray, nodes: int, keepers: int) -> None:
    """A published round as the hub stores it (federation/rounds.py `_publish`)."""
    with store.transaction() as tx:
        tx.execute(
            "INSERT INTO rounds VALUES (?, ?, ?, 'published', ?, ?, ?, ?, ?, ?, NULL)",
            [CATALOG.hash, W, W + DAY, W + DAY, W + DAY, json.dumps([f"{k:032x}" for k in range(keepers)]),
             json.dumps([[f"{n:032x}", "0" * 64] for n in range(nodes)]), np.asarray(aggregate, "<i8").tobytes(), W + DAY],
        )


def test_a_windows_federation_metrics_come_from_its_round(tmp_path: Path) -> None:
    store = HubStore(tmp_path / "hub.duckdb")
    source = RoundRanges(StoreRanges(store), PublishedRounds(store))
    aggregate = np.zeros(CATALOG.federation_size, dtype=np.int64)
    offset = 0
    for metric in CATALOG.federation_metrics:
        if metric.name == "geo_sessions":
            de = offset + CATALOG.domain("country").index("DE")
            ke = offset + CATALOG.domain("country").index("KE")
            aggregate[de], aggregate[ke] = 5_000, 30  # KE: under what two keepers' noise lets show
        offset += CATALOG.domain_size(metric)
    publish(store, aggregate, nodes=17, keepers=2)
    data = source.load(CATALOG, W, W + DAY)
    assert list(data.per_window) == [W] and data.nodes == 17
    geo = CATALOG.metric("geo_sessions")
    variance = 2 * laplace_variance(CATALOG.federation_scale(geo))
    assert 30 < presence_threshold(CATALOG, geo, variance, CATALOG.federation_scale(geo)) < 5_000
    view = VIEWS["geography"][1](data)
    assert [(c["country"], c["sessions"]["value"], c["sessions"]["nodes"]) for c in view["countries"]] == [("DE", 5_000, 17)]
    assert abs(view["countries"][0]["sessions"]["sd"] - variance ** 0.5) < 1e-9
    assert view["unattributed"]["all"]["value"] == 30  # KE's 30 (and every empty cell's zero) folded, not lost
    store.close()


def test_without_a_published_round_the_snapshots_serve(tmp_path: Path) -> None:
    store = HubStore(tmp_path / "hub.duckdb")
    source = RoundRanges(StoreRanges(store), PublishedRounds(store))
    assert source.load(CATALOG, W, W + DAY).per_window == {}
    store.close()


def test_with_the_data_version_rounds_and_window_counts_are_read_once_per_version(tmp_path: Path) -> None:
    """The hub hands its data version (bumped on every accepted snapshot and published round) to its sources."""
    store = HubStore(tmp_path / "hub.duckdb")
    version = [0]
    source = RoundRanges(StoreRanges(store, lambda: version[0]), PublishedRounds(store), lambda: version[0])
    assert source.load(CATALOG, W, W + DAY).per_window == {}
    aggregate = np.zeros(CATALOG.federation_size, dtype=np.int64)
    publish(store, aggregate, nodes=17, keepers=2)
    assert source.load(CATALOG, W, W + DAY).per_window == {}  # what was read for this version
    version[0] += 1
    first = source.load(CATALOG, W, W + DAY)
    assert list(first.per_window) == [W] and first.nodes == 17
    again = source.load(CATALOG, W - DAY, W + 2 * DAY)
    assert again.per_window[W] is first.per_window[W]  # made once per version, with what views keep of it
    version[0] += 1
    assert source.load(CATALOG, W, W + DAY).per_window[W] is not first.per_window[W]
    store.close()
