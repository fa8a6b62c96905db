"""The hub's Prometheus metrics (runtime/standard_metrics.py gives the registry, prefix and standard ones)."""

from __future__ import annotations

from runtime.standard_metrics import ServiceMetrics

PREFIX = "liberation_hub_"
"""Every metric of a hub starts with it (a node's with liberation_node_)."""


class HubMetrics(ServiceMetrics):
    """Counters of intake outcomes (one label value per intake check) and view latency."""

    def __init__(self) -> None:
        super().__init__(PREFIX)
        self.accepted = self.counter("snapshots_accepted", "Snapshots verified and merged")
        self.duplicates = self.counter("snapshots_duplicate", "Replays of an accepted snapshot (idempotent)")
        self.rejected = self.counter("snapshots_rejected", "Snapshots refused, by intake check", ["reason"])
        self.equivocations = self.counter("equivocations", "Nodes that offered different bytes for a window")
        self.intake_seconds = self.histogram(
            "intake_seconds", "Intake of one snapshot", (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
        )
        self.view_seconds = self.histogram(
            "view_seconds", "Views API latency", (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25), ["view"]
        )
        self.contributions_accepted = self.counter("contributions_accepted", "Round contributions verified and stored")
        self.contributions_rejected = self.counter(
            "contributions_rejected", "Round contributions refused, by check", ["reason"]
        )
        self.rounds = self.counter("rounds", "Rounds that reached a state", ["state"])
        self.keeper_requests = self.counter("keeper_requests", "Requests to share keepers, by outcome", ["outcome"])
