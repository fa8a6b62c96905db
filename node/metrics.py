"""The node's Prometheus metrics (runtime/standard_metrics.py gives the registry, prefix and standard ones)."""

from __future__ import annotations

from collections.abc import Callable

from runtime.standard_metrics import ServiceMetrics

PREFIX = "liberation_node_"
"""Every metric of a node starts with it (a hub's with liberation_hub_)."""


class NodeMetrics(ServiceMetrics):
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
        super().__init__(PREFIX)
        self.accepted = self.counter("events_accepted", "Events stored")
        self.rejected = self.counter("events_rejected", "Events refused, by reason", ["reason"])
        self.attributes_dropped = self.counter(
            "attributes_dropped", "Attributes dropped before storage (undeclared or out of domain)"
        )
        self.plausible_dropped = self.counter(
            "plausible_dropped", "Plausible events dropped (unknown domain or undeclared event)"
        )
        self.rate_limited = self.counter("rate_limited", "Requests answered 429")
        self.commit_seconds = self.histogram(
            "commit_seconds", "Duration of one group commit",
            (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.commit_rows = self.histogram("commit_rows", "Rows in one group commit", (1, 10, 100, 1_000, 10_000, 100_000))
        self.fold_seconds = self.histogram(
            "session_fold_seconds",
            "Duration of one fold of the session log into per-session state (every export pass)",
            (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.fold_rows = self.counter("session_fold_rows", "Session log rows folded into per-session state")
        self.compact_seconds = self.histogram(
            "store_compact_seconds",
            "Duration of one rewrite of node.duckdb after deletions (drains wait meanwhile, acks do not)",
            (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120),
        )
        self.compact_failures = self.counter(
            "store_compact_failures",
            "ALARM: rewrites of node.duckdb that failed (deleted rows stay in its free blocks until one succeeds)",
        )
        self.snapshots_exported = self.counter("snapshots_exported", "Windows exported (noise committed)")
        self.snapshots_adopted = self.counter(
            "snapshots_adopted", "Lost copies of published windows stored again, byte for byte (from the hub or a file)"
        )
        self.exports_refused = self.counter("exports_refused", "Exports refused, by reason", ["reason"])
        self.pushes = self.counter("pushes", "Snapshot push attempts, by outcome", ["outcome"])
        self.corrupt_snapshots = self.counter(
            "corrupt_snapshots", "ALARM: stored snapshots whose signature no longer verifies (never pushed)"
        )
        self.gauge("rows", "Raw event rows stored", rows)
        self.gauge("db_bytes", "Bytes on disk of the DuckDB file, its WAL and the stage files", db_bytes)
        self.gauge(
            "db_memory_bytes",
            "Memory DuckDB holds (buffer pool, indexes); grows toward memory_limit as it caches table blocks",
            db_memory,
        )
        self.gauge(
            "last_export_timestamp_seconds",
            "When this node last exported a snapshot (unix seconds, 0 = never): alert when it falls a day behind",
            last_export,
        )
        self.gauge(
            "last_push_success_timestamp_seconds", "When the hub last took a snapshot of this node (unix seconds, 0 = never)",
            last_push,
        )

    def observe_commit(self, rows: int, seconds: float) -> None:
        self.commit_seconds.observe(seconds)
        self.commit_rows.observe(rows)
