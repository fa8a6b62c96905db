"""Intake's steps (10) and (11): checked snapshot envelopes committed a batch per transaction, then archived.

    (10) one window length per node; the first envelope of a (node, window) is stored,
         identical bytes again are a duplicate, different bytes an equivocation (incident row)
    (11) the envelopes, their merged cells, the windows' node counts and the transparency
         log entries, in one transaction; then the accepted ones are archived

A merged sum that would overflow fails the transaction: the batch is committed again one
envelope at a time, and only the one that overflows is refused. federation/intake.py checks
envelopes, (1)-(9), and schedules the batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from federation.archive import Accepted, Archive
from federation.logwriter import LogWriter
from protocol.errors import Conflict, Problem, ProblemType, Unprocessable
from protocol.snapshot import Snapshot
from protocol.windows import WINDOW_LENGTHS


@dataclass(frozen=True)
class IntakeResult:
    """What intake did with one envelope."""

    status: str  # "accepted" or "duplicate"
    node: str
    window_start: int
    digest: str
    log_seq: int | None


@dataclass(frozen=True)
class Checked:
    """An envelope that passed checks (1)-(9), waiting for (10) and (11)."""

    envelope: bytes
    digest: str
    snapshot: Snapshot
    rows: pa.Table  # its merged-cell rows, built by the checks rather than in the (serial) commit
    started: float  # perf_counter() when its intake began


Outcome = IntakeResult | Problem


class IntakeCommit:
    """Commits checked envelopes; the only code that writes envelopes and merged cells."""

    def __init__(self, log: LogWriter, archive: Archive, now: Callable[[], float]) -> None:
        self.log = log
        self.archive = archive
        self.now = now

    def store(self, batch: Sequence[Checked]) -> list[Outcome]:
        """(10) and (11) for checked envelopes, in order, in one transaction (all of them, or each alone).

        Returns one outcome per envelope: its IntakeResult, or the Problem
        (overlapping window, equivocation, or a merged sum that would overflow) to answer with.
        """
        try:
            return self._commit(batch)
        except duckdb.DataError:
            # A merged sum would overflow. Only its snapshot is refused: commit the rest one at a time.
            return [self._commit_alone(checked) for checked in batch]

    def _commit_alone(self, checked: Checked) -> Outcome:
        try:
            return self._commit([checked])[0]
        except duckdb.DataError:
            return Unprocessable("merging this snapshot would overflow a merged sum", slug=ProblemType.CELLS_OUT_OF_DOMAIN)

    def archive_accepted(self, batch: Sequence[Checked], outcomes: Sequence[Outcome]) -> None:
        """Write the envelopes `store` accepted to the archive (after their commit: it can be rebuilt from the store)."""
        self.archive.write([
            Accepted(checked.snapshot, checked.digest, outcome.log_seq, checked.rows)
            for checked, outcome in zip(batch, outcomes, strict=False)
            if isinstance(outcome, IntakeResult) and outcome.status == "accepted" and outcome.log_seq is not None
        ])

    def _commit(self, batch: Sequence[Checked]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(batch)
        received = int(self.now())
        with self.log.transaction() as tx:
            # (10) one window length per node: nothing overlapping a window of another length it sent
            for i in sorted(overlapping := _overlapping(tx, batch)):
                outcomes[i] = Unprocessable(
                    "this node sent a window of another length that overlaps this one: a node publishes one "
                    "window length, or its data would count twice", slug=ProblemType.OVERLAPPING_WINDOW,
                    extra={"window_start": batch[i].snapshot.window_start},
                )
            live = [i for i in range(len(batch)) if i not in overlapping]
            # (10) within the batch: the first envelope of a (node, window) is the one offered to the store
            first: dict[tuple[str, int], int] = {}
            for i in live:
                first.setdefault((batch[i].snapshot.node, batch[i].snapshot.window_start), i)
            offered = sorted(first.values())
            inserted = _insert_envelopes(tx, [batch[i] for i in offered], received)
            # (10) against the store: what did not insert was there before
            kept: dict[tuple[str, int], tuple[bytes, str]] = {}
            for i in offered:
                key = (batch[i].snapshot.node, batch[i].snapshot.window_start)
                if key in inserted:
                    kept[key] = (batch[i].envelope, batch[i].digest)
                else:
                    row = tx.execute(
                        "SELECT envelope, digest FROM envelopes WHERE key_id = ? AND window_start = ?", list(key)
                    ).fetchall()
                    kept[key] = (bytes(row[0][0]), str(row[0][1]))
            fresh: list[int] = []
            incidents: list[list[object]] = []
            for i in live:
                checked = batch[i]
                snapshot = checked.snapshot
                key = (snapshot.node, snapshot.window_start)
                kept_envelope, kept_digest = kept[key]
                if first[key] == i and key in inserted:
                    fresh.append(i)
                elif kept_envelope == checked.envelope:
                    outcomes[i] = IntakeResult("duplicate", snapshot.node, snapshot.window_start, checked.digest, None)
                else:
                    # The incident row is committed; the offer itself is refused.
                    incidents.append(["equivocation", *key, kept_digest, checked.digest, received])
                    outcomes[i] = Conflict(
                        "this node already published different bytes for this window", slug=ProblemType.EQUIVOCATION,
                        extra={"window_start": snapshot.window_start},
                    )
            for incident in incidents:
                tx.execute("INSERT INTO incidents VALUES (?, ?, ?, ?, ?, ?)", incident)
            if fresh:
                accepted = [batch[i] for i in fresh]
                _merge(tx, accepted)
                seqs = self.log.append(tx, [_log_entry(c, received) for c in accepted])
                for i, seq in zip(fresh, seqs, strict=False):
                    snapshot = batch[i].snapshot
                    outcomes[i] = IntakeResult("accepted", snapshot.node, snapshot.window_start, batch[i].digest, seq)
        assert all(outcome is not None for outcome in outcomes)
        return outcomes  # type: ignore[return-value]


def _overlapping(tx: duckdb.DuckDBPyConnection, batch: Sequence[Checked]) -> set[int]:
    """Positions in `batch` of windows that overlap a window of another length from the same node,
    stored or earlier in the batch (a day and an hour of it: the node's data would count twice)."""
    snapshots = [c.snapshot for c in batch]
    rows = pa.table(
        {
            "pos": pa.array(range(len(batch)), pa.int64()),
            "key_id": [s.node for s in snapshots],
            "window_start": pa.array([s.window_start for s in snapshots], pa.int64()),
            "window_end": pa.array([s.window_end for s in snapshots], pa.int64()),
        }
    )
    # A stored window overlapping [start, end) starts after start minus the longest window length:
    # the literal bounds let DuckDB skip row groups by their min/max.
    low = min(s.window_start for s in snapshots) - max(WINDOW_LENGTHS.values())
    high = max(s.window_end for s in snapshots)
    with _registered(tx, "incoming_windows", rows):
        hits = tx.execute(
            """
            SELECT DISTINCT i.pos FROM incoming_windows i JOIN envelopes e ON e.key_id = i.key_id
            WHERE e.window_start > ? AND e.window_start < ?
              AND e.window_start < i.window_end AND e.window_end > i.window_start
              AND e.window_end - e.window_start <> i.window_end - i.window_start
            """,
            [low, high],
        ).fetchall()
    refused = {int(pos) for (pos,) in hits}
    spans: dict[str, list[tuple[int, int]]] = {}
    for i, s in enumerate(snapshots):
        if i in refused:
            continue
        length = s.window_end - s.window_start
        mine = spans.setdefault(s.node, [])
        if any(a < s.window_end and s.window_start < b and b - a != length for a, b in mine):
            refused.add(i)
        else:
            mine.append((s.window_start, s.window_end))
    return refused


def _insert_envelopes(
    tx: duckdb.DuckDBPyConnection, offered: Sequence[Checked], received: int
) -> set[tuple[str, int]]:
    """Insert the envelopes of (node, window)s not stored yet; return the keys that were inserted."""
    snapshots = [c.snapshot for c in offered]
    rows = pa.table(
        {
            "key_id": [s.node for s in snapshots],
            "window_start": pa.array([s.window_start for s in snapshots], pa.int64()),
            "window_end": pa.array([s.window_end for s in snapshots], pa.int64()),
            "catalog": [s.catalog for s in snapshots],
            "seq": pa.array([s.seq for s in snapshots], pa.int64()),
            "nodes": pa.array([s.nodes for s in snapshots], pa.int32()),
            "digest": [c.digest for c in offered],
            "envelope": pa.array([c.envelope for c in offered], pa.binary()),
            "received": pa.array([received] * len(offered), pa.int64()),
        }
    )
    with _registered(tx, "incoming_envelopes", rows):
        inserted = tx.execute(
            "INSERT INTO envelopes SELECT * FROM incoming_envelopes ON CONFLICT DO NOTHING RETURNING key_id, window_start"
        ).fetchall()
    return {(str(k), int(w)) for k, w in inserted}


def _merge(tx: duckdb.DuckDBPyConnection, accepted: Sequence[Checked]) -> None:
    """Add the accepted envelopes' cells to the merged sums, and their node counts to their windows'."""
    windows: dict[tuple[str, int], list[int]] = {}
    for checked in accepted:
        snapshot = checked.snapshot
        window = windows.setdefault((snapshot.catalog, snapshot.window_start), [snapshot.window_end, 0])
        window[1] += snapshot.nodes
    incoming = pa.concat_tables([checked.rows for checked in accepted])
    # Summed per cell first: one upsert may not touch a row twice; casts refuse an overflowing sum.
    with _registered(tx, "incoming_cells", incoming):
        tx.execute(
            """
            INSERT INTO merged
            SELECT catalog, window_start, metric, kind, idx,
                   sum(value)::BIGINT, sum(variance), sum(nodes)::INTEGER
            FROM incoming_cells GROUP BY catalog, window_start, metric, kind, idx
            ON CONFLICT (catalog, window_start, metric, kind, idx) DO UPDATE SET
                value = merged.value + excluded.value,
                variance = merged.variance + excluded.variance,
                nodes = merged.nodes + excluded.nodes
            """
        )
    # Usually one window per batch: plain statements cost less than an Arrow upsert here.
    for (catalog, start), (end, nodes) in windows.items():
        updated = tx.execute(
            "UPDATE windows SET nodes = nodes + ? WHERE catalog = ? AND window_start = ?", [nodes, catalog, start]
        ).fetchall()
        if not updated[0][0]:
            tx.execute("INSERT INTO windows VALUES (?, ?, ?, ?)", [catalog, start, end, nodes])


def _log_entry(checked: Checked, received: int) -> dict[str, object]:
    """An accepted snapshot's transparency log entry: who, which window, what digest, the epsilon per metric."""
    snapshot = checked.snapshot
    return {
        "node": snapshot.node, "window_start": snapshot.window_start, "window_end": snapshot.window_end,
        "catalog": snapshot.catalog, "digest": checked.digest,
        "epsilon": {name: cells.epsilon for name, cells in snapshot.metrics.items()}, "accepted": received,
    }


class _registered:
    """An Arrow table visible to SQL under `name` for the length of a `with` block."""

    def __init__(self, con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> None:
        self._con, self._name, self._table = con, name, table

    def __enter__(self) -> None:
        self._con.register(self._name, self._table)

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            self._con.unregister(self._name)
        except duckdb.Error:
            if exc_type is None:
                raise
            # The transaction is aborted by the error on its way out, which is the one to report.
