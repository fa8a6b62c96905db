"""The node's Prometheus metrics, in a registry of its own (no process-global state)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from runtime.standard_metrics import register_standard_metrics

PREFIX = "liberation_node_"
"""Every metric of a node starts with it (a hub's with liberation_hub_)."""


class NodeMetrics:
    """Counters and gauges of one node app."""

    def __init__(
        self,
        rows: Callable[[], float],
        db_bytes: Callable[[], float],
        db_memory: Callable[[], float],
        *,
        last_export: Callable[[], float] = lambda: 0,
        last_push: Callable[[], float] = lambda: 0,
    ) -> None:
        """`last_export`, `last_push`: when this node last made a snapshot and last had one taken by the hub
        (unix seconds, 0 = never): times of the operator's own machinery, never of an event."""
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        register_standard_metrics(r, PREFIX)
        self.accepted = Counter("liberation_node_events_accepted", "Events stored", registry=r)
        self.rejected = Counter(
            "liberation_node_events_rejected", "Events refused, by reason", ["reason"], registry=r
        )
        self.attributes_dropped = Counter(
            "liberation_node_attributes_dropped",
            "Attributes dropped before storage (undeclared or out of domain)",
            registry=r,
        )
        self.plausible_dropped = Counter(
            "liberation_node_plausible_dropped",
            "Plausible events dropped (unknown domain or undeclared event)",
            registry=r,
        )
        self.rate_limited = Counter(
            "liberation_node_rate_limited", "Requests answered 429", registry=r
        )
        self.commit_seconds = Histogram(
            "liberation_node_commit_seconds",
            "Duration of one group commit",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.commit_rows = Histogram(
            "liberation_node_commit_rows",
            "Rows in one group commit",
            buckets=(1, 10, 100, 1_000, 10_000, 100_000),
            registry=r,
        )
        self.fold_seconds = Histogram(
            "liberation_node_session_fold_seconds",
            "Duration of one fold of the session log into per-session state (every export pass)",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.fold_rows = Counter(
            "liberation_node_session_fold_rows", "Session log rows folded into per-session state", registry=r
        )
        self.compact_seconds = Histogram(
            "liberation_node_store_compact_seconds",
            "Duration of one rewrite of node.duckdb after deletions (drains wait meanwhile, acks do not)",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120),
            registry=r,
        )
        self.compact_failures = Counter(
            "liberation_node_store_compact_failures",
            "ALARM: rewrites of node.duckdb that failed (deleted rows stay in its free blocks until one succeeds)",
            registry=r,
        )
        self.snapshots_exported = Counter(
            "liberation_node_snapshots_exported", "Windows exported (noise committed)", registry=r
        )
        self.snapshots_adopted = Counter(
            "liberation_node_snapshots_adopted",
            "Lost copies of published windows stored again, byte for byte (from the hub or a file)",
            registry=r,
        )
        self.exports_refused = Counter(
            "liberation_node_exports_refused", "Exports refused, by reason", ["reason"], registry=r
        )
        self.pushes = Counter(
            "liberation_node_pushes", "Snapshot push attempts, by outcome", ["outcome"], registry=r
        )
        self.corrupt_snapshots = Counter(
            "liberation_node_corrupt_snapshots",
            "ALARM: stored snapshots whose signature no longer verifies (never pushed)",
            registry=r,
        )
        Gauge("liberation_node_rows", "Raw event rows stored", registry=r).set_function(rows)
        Gauge(
            "liberation_node_db_bytes", "Bytes on disk of the DuckDB file, its WAL and the stage files", registry=r
        ).set_function(db_bytes)
        Gauge(
            "liberation_node_db_memory_bytes",
            "Memory DuckDB holds (buffer pool, indexes); grows toward memory_limit as it caches table blocks",
            registry=r,
        ).set_function(db_memory)

        Gauge(
            "liberation_node_last_export_timestamp_seconds",
            "When this node last exported a snapshot (unix seconds, 0 = never): alert when it falls a day behind",
            registry=r,
        ).set_function(last_export)
        Gauge(
            "liberation_node_last_push_success_timestamp_seconds",
            "When the hub last took a snapshot of this node (unix seconds, 0 = never)",
            registry=r,
        ).set_function(last_push)

    def observe_commit(self, rows: int, seconds: float) -> None:
        self.commit_seconds.observe(seconds)
        self.commit_rows.observe(rows)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
