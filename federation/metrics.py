"""The hub's Prometheus metrics, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from runtime.standard_metrics import register_standard_metrics

PREFIX = "liberation_hub_"
"""Every metric of a hub starts with it (a node's with liberation_node_)."""


class HubMetrics:
    """Counters of intake outcomes (one label value per intake check) and view latency."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        register_standard_metrics(r, PREFIX)
        self.accepted = Counter("liberation_hub_snapshots_accepted", "Snapshots verified and merged", registry=r)
        self.duplicates = Counter(
            "liberation_hub_snapshots_duplicate", "Replays of an accepted snapshot (idempotent)", registry=r
        )
        self.rejected = Counter(
            "liberation_hub_snapshots_rejected", "Snapshots refused, by intake check", ["reason"], registry=r
        )
        self.equivocations = Counter(
            "liberation_hub_equivocations", "Nodes that offered different bytes for a window", registry=r
        )
        self.intake_seconds = Histogram(
            "liberation_hub_intake_seconds", "Intake of one snapshot",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5), registry=r,
        )
        self.view_seconds = Histogram(
            "liberation_hub_view_seconds", "Views API latency", ["view"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25), registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
