"""Signed node snapshots for hub tests, built by the node's own snapshot builder."""

from __future__ import annotations

from collections.abc import Callable

from node.noising import build_snapshot
from protocol.catalog import Catalog, load_catalog
from protocol.envelope import sign_snapshot
from protocol.keys import SigningKey
from protocol.snapshot import Snapshot
from tests.seeded_noise import SeededLaplace

DAY = 86_400


def node_snapshot(
    key: SigningKey,
    window_start: int,
    *,
    seed: int = 1,
    counts: Callable[[str, int], int] | None = None,
    catalog: Catalog | None = None,
    seq: int = 1,
) -> Snapshot:
    """A node's snapshot of one day: `counts(metric, index)` true counts (default: busy), seeded noise."""
    catalog = catalog or load_catalog()
    fill = counts or (lambda metric, i: 400 if i % 3 == 0 else 0)
    tables = {m.name: [fill(m.name, i) for i in range(catalog.domain_size(m))] for m in catalog.metrics}
    return build_snapshot(
        catalog, tables, node=key.public.key_id, window_start=window_start, window_end=window_start + catalog.window_seconds,
        seq=seq, created=window_start + DAY + 3600, sampler=SeededLaplace(seed),
    )


def envelope(key: SigningKey, window_start: int, **kwargs: object) -> bytes:
    return sign_snapshot(node_snapshot(key, window_start, **kwargs), key)  # type: ignore[arg-type]
