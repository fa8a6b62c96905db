"""Snapshot intake: every check in order, each with its own problem type, status and counter.

    (1) size limit                          413 snapshot-too-large
    (2) envelope shape (canonical msgpack)  400 malformed-envelope
    (3) key enrolled and not revoked        403 unknown-key / revoked-key
    (4) signature over the bytes received   400 invalid-signature / key-mismatch
    (5) body decodes to a snapshot          400 malformed-snapshot
    (6) catalog known                       422 unknown-catalog
    (7) window sane                         422 window-out-of-range
    (8) cells inside the catalog's domains  422 cells-out-of-domain
    (9) same node and window seen before:   identical bytes -> 200 (idempotent, counted once)
                                            different bytes -> 409 equivocation (incident recorded)
    (10) commit: envelope, merged cells, transparency log entry, in one transaction; then archive
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pyarrow as pa

from federation.archive import Archive
from federation.merge import snapshot_table
from federation.metrics import HubMetrics
from federation.registry import Registry
from federation.store import HubStore
from federation.translog import GENESIS, entry_hash
from protocol.catalog import Catalog
from protocol.errors import BadRequest, Conflict, PayloadTooLarge, Problem, Unprocessable
from protocol.snapshot import Snapshot
from protocol.wire import DecodeError, SignatureError, verify_envelope

log = logging.getLogger("liberation.hub.intake")

WINDOW_LENGTHS = (3_600, 86_400)


@dataclass(frozen=True)
class IntakeResult:
    """What intake did with one envelope."""

    status: str  # "accepted" or "duplicate"
    node: str
    window_start: int
    digest: str
    log_seq: int | None


class Intake:
    """Verifies and merges snapshots; the only code that writes envelopes and merged cells."""

    def __init__(
        self,
        *,
        store: HubStore,
        registry: Registry,
        catalogs: Mapping[str, Catalog],
        archive: Archive,
        metrics: HubMetrics,
        max_bytes: int,
        horizon_seconds: int,
        skew_seconds: int,
        now: Callable[[], float] = time.time,
        on_accept: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.catalogs = catalogs
        self.archive = archive
        self.metrics = metrics
        self.max_bytes = max_bytes
        self.horizon = horizon_seconds
        self.skew = skew_seconds
        self.now = now
        self._on_accept = on_accept

    def accept(self, data: bytes) -> IntakeResult:
        """Run every check on one envelope; raise the check's Problem, or return the outcome."""
        started = time.perf_counter()
        try:
            result = self._accept(data)
        except Problem as problem:
            self.metrics.rejected.labels(problem.slug).inc()
            raise
        if result.status == "accepted":
            self.metrics.accepted.inc()
            if self._on_accept is not None:
                self._on_accept()
        else:
            self.metrics.duplicates.inc()
        self.metrics.intake_seconds.observe(time.perf_counter() - started)
        return result

    def _accept(self, data: bytes) -> IntakeResult:
        # (1) size limit, before anything is parsed
        if len(data) > self.max_bytes:
            raise PayloadTooLarge(f"a snapshot envelope is at most {self.max_bytes} bytes", slug="snapshot-too-large")
        # (2)-(5): shape, key policy, signature over the bytes as received, body
        try:
            verified = verify_envelope(data, max_size=self.max_bytes, check_key=self.registry.require_active)
        except SignatureError as exc:
            slug = "key-mismatch" if exc.reason == "key-mismatch" else "invalid-signature"
            raise BadRequest(str(exc.detail), slug=slug) from None
        except DecodeError as exc:
            # A body refused after a good signature is a node bug, not a forgery.
            slug = "malformed-snapshot" if exc.in_body else "malformed-envelope"
            raise BadRequest(str(exc.detail), slug=slug, extra={"reason": exc.reason}) from None
        snapshot = verified.snapshot
        # (6) catalog known
        catalog = self.catalogs.get(snapshot.catalog)
        if catalog is None:
            raise Unprocessable("this hub does not merge that catalog", slug="unknown-catalog")
        # (7) window sane
        self._check_window(snapshot)
        # (8) cells inside the catalog's public domains
        _check_cells(catalog, snapshot)
        # (9) + (10)
        return self._commit(verified.envelope, verified.digest, snapshot)

    def _check_window(self, snapshot: Snapshot) -> None:
        length = snapshot.window_end - snapshot.window_start
        if length not in WINDOW_LENGTHS or snapshot.window_start % length:
            raise Unprocessable("a window is one aligned UTC hour or day", slug="window-out-of-range")
        now = self.now()
        if snapshot.window_end > now + self.skew:
            raise Unprocessable("the window has not ended yet", slug="window-out-of-range")
        if snapshot.window_start < now - self.horizon:
            raise Unprocessable("the window is older than this hub's horizon", slug="window-out-of-range")

    def _commit(self, envelope: bytes, digest: str, snapshot: Snapshot) -> IntakeResult:
        node, window = snapshot.node, snapshot.window_start
        with self.store.transaction() as tx:
            seen = tx.execute(
                "SELECT envelope, digest FROM envelopes WHERE key_id = ? AND window_start = ?", [node, window]
            ).fetchall()
            if seen:
                kept_envelope, kept_digest = bytes(seen[0][0]), str(seen[0][1])
                if kept_envelope == envelope:
                    return IntakeResult("duplicate", node, window, digest, None)
                tx.execute(
                    "INSERT INTO incidents VALUES ('equivocation', ?, ?, ?, ?, ?)",
                    [node, window, kept_digest, digest, int(self.now())],
                )
                equivocation = True
            else:
                equivocation = False
                received = int(self.now())
                tx.execute(
                    "INSERT INTO envelopes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [node, window, snapshot.window_end, snapshot.catalog, snapshot.seq, snapshot.nodes,
                     digest, envelope, received],
                )
                self._merge(tx, snapshot)
                log_seq = self._append_log(tx, snapshot, digest, received)
        if equivocation:
            # The incident row is committed; the offer itself is refused.
            self.metrics.equivocations.inc()
            log.warning("equivocation", extra={"node": node, "window_start": window})
            raise Conflict(
                "this node already published different bytes for this window", slug="equivocation",
                extra={"window_start": window},
            )
        self.archive.write(snapshot, digest)
        return IntakeResult("accepted", node, window, digest, log_seq)

    def _merge(self, tx: object, snapshot: Snapshot) -> None:
        table = snapshot_table(snapshot, self.catalogs[snapshot.catalog])
        incoming = pa.table(
            {
                "catalog": [snapshot.catalog] * len(table),
                "window_start": pa.array([snapshot.window_start] * len(table), pa.int64()),
                "metric": [k[0] for k in table],
                "kind": [k[1] for k in table],
                "idx": pa.array([k[2] for k in table], pa.int64()),
                "value": pa.array([c.value for c in table.values()], pa.int64()),
                "variance": pa.array([c.variance for c in table.values()], pa.float64()),
                "nodes": pa.array([c.nodes for c in table.values()], pa.int32()),
            }
        )
        con = tx  # the transaction's connection
        con.register("incoming_cells", incoming)  # type: ignore[attr-defined]
        try:
            con.execute(  # type: ignore[attr-defined]
                """
                INSERT INTO merged SELECT * FROM incoming_cells
                ON CONFLICT (catalog, window_start, metric, kind, idx) DO UPDATE SET
                    value = merged.value + excluded.value,
                    variance = merged.variance + excluded.variance,
                    nodes = merged.nodes + excluded.nodes
                """
            )
        finally:
            con.unregister("incoming_cells")  # type: ignore[attr-defined]
        con.execute(  # type: ignore[attr-defined]
            """
            INSERT INTO windows VALUES (?, ?, ?, ?)
            ON CONFLICT (catalog, window_start) DO UPDATE SET nodes = windows.nodes + excluded.nodes
            """,
            [snapshot.catalog, snapshot.window_start, snapshot.window_end, snapshot.nodes],
        )

    def _append_log(self, tx: object, snapshot: Snapshot, digest: str, accepted: int) -> int:
        con = tx
        last = con.execute("SELECT seq, entry_hash FROM translog ORDER BY seq DESC LIMIT 1").fetchall()  # type: ignore[attr-defined]
        seq, prev = (int(last[0][0]) + 1, str(last[0][1])) if last else (1, GENESIS)
        content = {
            "seq": seq,
            "node": snapshot.node,
            "window_start": snapshot.window_start,
            "window_end": snapshot.window_end,
            "catalog": snapshot.catalog,
            "digest": digest,
            "epsilon": {name: cells.epsilon for name, cells in sorted(snapshot.metrics.items())},
            "accepted": accepted,
        }
        con.execute(  # type: ignore[attr-defined]
            "INSERT INTO translog VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [seq, snapshot.node, snapshot.window_start, snapshot.window_end, snapshot.catalog, digest,
             json.dumps(content["epsilon"], sort_keys=True), accepted, prev, entry_hash(prev, content)],
        )
        return seq


def _check_cells(catalog: Catalog, snapshot: Snapshot) -> None:
    """(8) Every metric of the catalog present, every index inside its domain."""
    expected = {m.name for m in catalog.metrics}
    if set(snapshot.metrics) != expected:
        raise Unprocessable("the snapshot's metrics are not the catalog's", slug="cells-out-of-domain")
    for metric in catalog.metrics:
        cells = snapshot.metrics[metric.name]
        if cells.idx and cells.idx[-1] >= catalog.domain_size(metric):
            raise Unprocessable(f"metric {metric.name}: a cell index is outside its domain", slug="cells-out-of-domain")
        if cells.other_idx and cells.other_idx[-1] >= catalog.prefix_size(metric):
            raise Unprocessable(f"metric {metric.name}: an other index is outside its prefix domain", slug="cells-out-of-domain")
