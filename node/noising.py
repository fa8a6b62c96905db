"""A window's true tables noised into a snapshot body: every cell of every metric's domain, discrete Laplace (OpenDP).

A pure core, tested without a store or a server; node/export.py signs and commits what it builds, once.
"""

from __future__ import annotations

from protocol.catalog import Catalog
from protocol.snapshot import FORMAT, MetricCells, Snapshot
from runtime.dp import NoiseSampler, opendp_laplace


def build_snapshot(
    catalog: Catalog,
    tables: dict[str, list[int]],
    *,
    node: str,
    window_start: int,
    window_end: int,
    seq: int,
    created: int,
    sampler: NoiseSampler = opendp_laplace,
) -> Snapshot:
    """Noise every cell of every metric's domain and publish them all: the snapshot body.

    Nothing is suppressed here: presence is decided once, on merged sums
    (views/significance.py), so every sum over snapshots stays unbiased.
    """
    metrics: dict[str, MetricCells] = {}
    for metric in catalog.metrics:
        counts = tables[metric.name]
        if len(counts) != catalog.domain_size(metric):
            raise ValueError(f"metric {metric.name!r}: table does not cover its domain")
        scale = catalog.scale(metric)
        noisy = sampler(counts, scale)
        metrics[metric.name] = MetricCells(
            epsilon=catalog.epsilon(metric),
            scale=scale,
            variance=catalog.variance(metric),
            threshold=catalog.threshold(metric),
            idx=tuple(range(len(noisy))),
            val=tuple(noisy),
            other_idx=(),
            other_val=(),
        )
    return Snapshot(
        format=FORMAT,
        node=node,
        catalog=catalog.hash,
        window_start=window_start,
        window_end=window_end,
        seq=seq,
        created=created,
        nodes=1,
        metrics=metrics,
    )
