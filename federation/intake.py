"""Snapshot intake: every check in order, each with its own problem type, status and counter.

    (1) size limit                          413 snapshot-too-large
    (2) envelope layout                     400 malformed-envelope
    (3) key usable, enrolled, not revoked   400 invalid-signature (unusable key), 403 unknown-key / revoked-key
    (4) signature over the bytes received   400 invalid-signature / key-mismatch
    (5) body decodes to a snapshot          400 malformed-snapshot
    (6) catalog known                       422 unknown-catalog
    (7) window sane: the catalog's length   422 window-out-of-range
        (a UTC day, or an ISO week from
        Monday), ended, inside the horizon
    (8) what the snapshot declares is the   422 invalid-node-count: a node's counts 1 node, a child hub's
        catalog's                               at most MAX_CHILD_NODES
                                            422 privacy-parameters-mismatch: epsilon, scale, variance,
                                                threshold of every metric (`_check_declared`)
    (9) cells inside the catalog's domains  422 cells-out-of-domain
        (and values, variances the merged sums can hold)
    (10) a window of another length from    422 overlapping-window (one window length per node)
         the same node overlaps this one
         same node and window seen before:  identical bytes -> 200 (idempotent, counted once)
                                            different bytes -> 409 equivocation (incident recorded)
    (11) commit: envelope, merged cells, transparency log entry, in one transaction; then archive

(1)-(3) read headers and a dictionary only, so they run on the event loop for
any envelope: an unauthenticated sender never gets further. (4)-(9) need no
database and run per request (`check`): on the event loop for an envelope up to
INLINE_BYTES, else in a worker thread, at most CHECK_SLOTS at a time; a large
envelope that finds them all taken is answered 503 intake-busy with
Retry-After (nodes retry a 5xx). (10) and (11) run as a group commit (`commit`,
`submit`): concurrent requests queue up while a transaction is being written
and the next transaction takes them together, so the fixed cost of DuckDB
statements and commit (~15 ms) is paid once per batch, not once per snapshot.
(10) sees the earlier envelopes of its own batch as well as the stored ones. A
request is answered only after its batch committed (acked means durable) and
after the batch before it was archived.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import duckdb
import pyarrow as pa

from federation.archive import Accepted, Archive
from federation.logwriter import LogWriter
from federation.metrics import HubMetrics
from federation.store import HubStore
from protocol.catalog import Catalog
from protocol.codec import EnvelopeError
from protocol.envelope import Envelope, SignatureError
from protocol.errors import (
    BadRequest,
    Conflict,
    PayloadTooLarge,
    Problem,
    ProblemType,
    ServiceUnavailable,
    Unprocessable,
)
from protocol.snapshot import Snapshot, max_envelope_size
from protocol.windows import WINDOW_LENGTHS, is_window_start
from runtime.groupcommit import GroupQueue, StorageUnavailable, storage_unavailable
from runtime.registry import Kind, Registry
from views.merge import snapshot_rows

log = logging.getLogger("liberation.hub.intake")

_T = TypeVar("_T")

MAX_MAGNITUDE = 2**53
"""Largest |value| and variance merged: exact as a float64 and in JSON, and far from overflowing an int64 sum."""
MAX_CHILD_NODES = 2**20
"""Largest node count of a child hub's snapshot; a node's is 1. The store counts nodes in INTEGER columns
(2**31 - 1): over 2,000 child hubs at this bound before a window's sum could overflow."""
VARIANCE_TOLERANCE = 1e-12
"""Relative: the variance formula runs exp(), which may differ by an ulp between platforms' maths libraries."""
MAX_BATCH = 256
"""Most envelopes committed in one transaction."""
INLINE_BYTES = 8 * 1024
"""Envelopes up to this size are verified and decoded on the event loop (about 1 ms for a typical 4 KB one);
larger ones in a worker thread, so the loop never decodes more than this."""
CHECK_SLOTS = 2
"""Large envelopes verified and decoded at once, one worker thread each (a core each, at best: the decode holds
the GIL). One more meanwhile is answered 503 rather than queued."""
RETRY_AFTER_SECONDS = 1
SIZE_MARGIN = 2
"""The size limit is this many times the largest envelope a merged catalog can produce (`max_envelope_size`)."""
LINGER_SECONDS = 0.015
"""Longest a commit waits to gather its batch: a transaction costs about as much for 1 envelope as for 16."""


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
    rows: pa.Table  # its merged-cell rows, built here rather than in the (serial) commit
    started: float  # perf_counter() when its intake began


Outcome = IntakeResult | Problem


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
        log: LogWriter | None = None,
        now: Callable[[], float] = time.time,
        on_accept: Callable[[], None] | None = None,
        max_batch: int = MAX_BATCH,
    ) -> None:
        """`log`: the transparency log's writer, shared with federation rounds (a fresh one if None)."""
        self.store = store
        self.log = log if log is not None else LogWriter(store)
        self.registry = registry
        self.catalogs = catalogs
        self.archive = archive
        self.metrics = metrics
        self.max_bytes = max_bytes
        self.horizon = horizon_seconds
        self.skew = skew_seconds
        self.now = now
        self.max_batch = max_batch
        self._on_accept = on_accept
        self._queue: GroupQueue[Checked] = GroupQueue(max_batch)
        self._committer: asyncio.Task[None] | None = None
        self._checking = 0  # envelopes in checks (4)-(9) in a worker thread, about to queue
        self._arrived = asyncio.Event()  # set when an envelope queues or a check ends
        self._inflight = 0  # requests inside `submit`
        self._peak = (0, 0.0)  # most requests inside `submit` at once lately, and since when

    # ---- entry points ------------------------------------------------------------------

    def accept(self, data: bytes) -> IntakeResult:
        """Run every check on one envelope and commit it alone; raise the check's Problem, or return the outcome."""
        outcome = self.commit([self.check(data)])[0]
        if isinstance(outcome, Problem):
            raise outcome
        return outcome

    async def submit(self, data: bytes) -> IntakeResult:
        """`accept` for a server: checks (in a worker thread if large), then a place in the next group commit."""
        self._inflight += 1
        try:
            return await self._submit(data)
        finally:
            self._inflight -= 1

    async def _submit(self, data: bytes) -> IntakeResult:
        loop = asyncio.get_running_loop()
        peak, since = self._peak
        now = loop.time()
        self._peak = (self._inflight, now) if now - since > 1.0 else (max(peak, self._inflight), since)
        started = time.perf_counter()
        envelope, kind = self._counted(self._open, data)
        if len(data) <= INLINE_BYTES:
            checked = self._counted(self._verify, envelope, kind, started)
        elif self._checking >= CHECK_SLOTS:
            self.metrics.rejected.labels("intake-busy").inc()
            raise ServiceUnavailable(
                "the hub is verifying other large snapshots; retry shortly",
                retry_after=RETRY_AFTER_SECONDS, slug=ProblemType.INTAKE_BUSY,
            )
        else:
            self._checking += 1
            try:
                checked = await asyncio.to_thread(self._counted, self._verify, envelope, kind, started)
            finally:
                self._checking -= 1
                self._arrived.set()
        future = self._queue.put(checked, 1)
        self._arrived.set()
        if self._committer is None or self._committer.done():
            # Runs while envelopes are queued, then ends: nothing to start or stop with the app.
            self._committer = loop.create_task(self._commit_queued(), name="hub-intake-commit")
        try:
            outcome: Outcome = await future
        except StorageUnavailable:
            self.metrics.rejected.labels("storage-unavailable").inc()
            raise storage_unavailable() from None
        if isinstance(outcome, Problem):
            raise outcome
        return outcome

    async def _commit_queued(self) -> None:
        # Pipelined: batch N+1 is written to DuckDB while batch N is archived, and batch N+1 is
        # answered only once batch N is archived. So the archive trails the acks by one batch at
        # most, and any answer implies every earlier accepted snapshot is in the archive.
        archiving: asyncio.Future[None] | None = None
        while True:
            if not self._queue:
                if archiving is None:
                    return  # with no await since the queue was seen empty: `submit` starts a new task
                await _archived(archiving)
                archiving = None
                continue  # more may have queued meanwhile
            await self._linger()
            group = await self._queue.take()
            checked = group.items
            try:
                outcomes = await asyncio.to_thread(self._store, checked)
            except Exception as exc:  # noqa: BLE001 - every waiter must hear of it
                log.error("commit of %d snapshots failed: %s", len(checked), type(exc).__name__)
                self._queue.settle(group, error=StorageUnavailable(type(exc).__name__))
                continue
            if archiving is not None:
                await _archived(archiving)
            self._count(checked, outcomes)
            self._queue.settle(group, results=outcomes)
            archiving = asyncio.ensure_future(asyncio.to_thread(self._archive, checked, outcomes))

    async def _linger(self) -> None:
        """Wait briefly until half the clients posting lately have queued, and for envelopes still being checked.

        A transaction costs about as much for 1 envelope as for 16. Taking
        whatever is queued degenerates into alternating batches of nearly all
        clients and of the one that came back during their commit, which then
        costs a whole transaction alone. Half the clients per batch keeps two
        batches in turn: one in DuckDB (which releases the GIL) while the other
        is received and checked. Under a light load there is nothing to wait for.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LINGER_SECONDS
        target = min(self.max_batch, (self._peak[0] + 1) // 2)
        while len(self._queue) < self.max_batch and (len(self._queue) < target or self._checking):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    # ---- (1)-(9) ------------------------------------------------------------------------

    def check(self, data: bytes) -> Checked:
        """Checks (1)-(9) on one envelope; raise (and count) the first that fails."""
        started = time.perf_counter()
        return self._counted(self._verify, *self._counted(self._open, data), started)

    def _counted(self, step: Callable[..., _T], *args: object) -> _T:
        try:
            return step(*args)
        except Problem as problem:
            self.metrics.rejected.labels(problem.slug).inc()
            raise

    def _open(self, data: bytes) -> tuple[Envelope, Kind]:
        """(1)-(3): headers and a registry lookup only, whatever the size: safe on the event loop."""
        # (1) size limit, before anything is parsed
        if len(data) > self.max_bytes:
            raise PayloadTooLarge(f"a snapshot envelope is at most {self.max_bytes} bytes", slug=ProblemType.SNAPSHOT_TOO_LARGE)
        try:
            # (2) the envelope's fixed layout; (3) a usable key ...
            envelope = Envelope.from_bytes(data, max_size=self.max_bytes)
        except EnvelopeError as exc:
            raise _problem(exc) from None
        # (3) ... enrolled and not revoked, before any signature work
        return envelope, self.registry.require_active(envelope.public_key).kind

    def _verify(self, envelope: Envelope, kind: Kind, started: float) -> Checked:
        """(4)-(9): signature, body decode, catalog, window, declared parameters, cells."""
        # (4) signature over the bytes as received, (5) then the body decode, and the body's key id
        try:
            verified = envelope.verify(max_size=self.max_bytes)
        except EnvelopeError as exc:
            raise _problem(exc) from None
        snapshot = verified.snapshot
        # (6) catalog known
        catalog = self.catalogs.get(snapshot.catalog)
        if catalog is None:
            raise Unprocessable("this hub does not merge that catalog", slug=ProblemType.UNKNOWN_CATALOG)
        # (7) window sane
        self._check_window(catalog, snapshot)
        # (8) node count and privacy parameters are what the catalog fixes for this kind of key
        _check_declared(catalog, snapshot, kind)
        # (9) cells inside the catalog's public domains
        _check_cells(catalog, snapshot)
        return Checked(verified.envelope, verified.digest, snapshot, snapshot_rows(snapshot, catalog), started)

    def _check_window(self, catalog: Catalog, snapshot: Snapshot) -> None:
        length = catalog.window_seconds
        if snapshot.window_end - snapshot.window_start != length or not is_window_start(snapshot.window_start, length):
            raise Unprocessable(
                "a window of this catalog is one UTC day" if catalog.window == "day"
                else "a window of this catalog is one ISO week, from Monday 00:00 UTC",
                slug=ProblemType.WINDOW_OUT_OF_RANGE,
            )
        now = self.now()
        if snapshot.window_end > now + self.skew:
            raise Unprocessable("the window has not ended yet", slug=ProblemType.WINDOW_OUT_OF_RANGE)
        if snapshot.window_start < now - self.horizon:
            raise Unprocessable("the window is older than this hub's horizon", slug=ProblemType.WINDOW_OUT_OF_RANGE)

    # ---- (10) + (11) --------------------------------------------------------------------

    def commit(self, batch: Sequence[Checked]) -> list[Outcome]:
        """(10) and (11) for checked envelopes, in order, in one transaction; then archive and count.

        Returns one outcome per envelope: its IntakeResult, or the Problem
        (equivocation, or a merged sum that would overflow) to answer with.
        """
        outcomes = self._store(batch)
        self._archive(batch, outcomes)
        self._count(batch, outcomes)
        return outcomes

    def _store(self, batch: Sequence[Checked]) -> list[Outcome]:
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

    def _archive(self, batch: Sequence[Checked], outcomes: Sequence[Outcome]) -> None:
        self.archive.write([
            Accepted(checked.snapshot, checked.digest, outcome.log_seq, checked.rows)
            for checked, outcome in zip(batch, outcomes, strict=False)
            if isinstance(outcome, IntakeResult) and outcome.status == "accepted" and outcome.log_seq is not None
        ])

    def _count(self, batch: Sequence[Checked], outcomes: Sequence[Outcome]) -> None:
        for checked, outcome in zip(batch, outcomes, strict=False):
            snapshot = checked.snapshot
            if isinstance(outcome, Problem):
                if outcome.slug == "equivocation":
                    self.metrics.equivocations.inc()
                    log.warning("equivocation", extra={"node": snapshot.node, "window_start": snapshot.window_start})
                self.metrics.rejected.labels(outcome.slug).inc()
                continue
            if outcome.status == "accepted":
                self.metrics.accepted.inc()
                if self._on_accept is not None:
                    self._on_accept()
            else:
                self.metrics.duplicates.inc()
            self.metrics.intake_seconds.observe(time.perf_counter() - checked.started)

    def _commit(self, batch: Sequence[Checked]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(batch)
        received = int(self.now())
        with self.log.transaction() as tx:
            # (10) one window length per node: nothing overlapping a window of another length it sent
            for i in sorted(overlapping := self._overlapping(tx, batch)):
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
            inserted = self._insert_envelopes(tx, [batch[i] for i in offered], received)
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
                self._merge(tx, accepted)
                seqs = self.log.append(tx, [_log_entry(c, received) for c in accepted])
                for i, seq in zip(fresh, seqs, strict=False):
                    snapshot = batch[i].snapshot
                    outcomes[i] = IntakeResult("accepted", snapshot.node, snapshot.window_start, batch[i].digest, seq)
        assert all(outcome is not None for outcome in outcomes)
        return outcomes  # type: ignore[return-value]

    def _overlapping(self, tx: duckdb.DuckDBPyConnection, batch: Sequence[Checked]) -> set[int]:
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
        self, tx: duckdb.DuckDBPyConnection, offered: Sequence[Checked], received: int
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

    def _merge(self, tx: duckdb.DuckDBPyConnection, accepted: Sequence[Checked]) -> None:
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


async def _archived(archiving: asyncio.Future[None]) -> None:
    try:
        await archiving
    except Exception as exc:  # noqa: BLE001 - committed and answered; the archive can be rebuilt from the store
        log.error("archive write failed: %s", type(exc).__name__)


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


def size_limit(catalogs: Mapping[str, Catalog], ceiling: int) -> int:
    """The largest envelope intake reads: SIZE_MARGIN times the largest its catalogs produce, at most `ceiling`."""
    return min(ceiling, SIZE_MARGIN * max(max_envelope_size(c) for c in catalogs.values()))


def _problem(exc: EnvelopeError) -> Problem:
    """The problem for a refused envelope: a body refused after a good signature is a node bug, not a forgery."""
    if isinstance(exc, SignatureError):
        return BadRequest(
            exc.detail, slug=ProblemType.KEY_MISMATCH if exc.reason == "key-mismatch" else ProblemType.INVALID_SIGNATURE
        )
    slug = ProblemType.MALFORMED_SNAPSHOT if exc.in_body else ProblemType.MALFORMED_ENVELOPE
    return BadRequest(exc.detail, slug=slug, extra={"reason": exc.reason})


def _check_declared(catalog: Catalog, snapshot: Snapshot, kind: Kind) -> None:
    """(8) The node count and every metric's noise parameters are the catalog's, so none is self-declared.

    A node's snapshot counts one node and carries exactly what its catalog
    derives (node/export.py builds it so): the epsilon the public log records,
    the scale and variance the views' uncertainty rests on, the threshold (0:
    nothing suppressed). A child hub's (federation/upstream.py) merges nodes:
    the catalog's epsilon, scale and threshold, and a variance at least one node's.
    """
    if kind == "node" and snapshot.nodes != 1:
        raise Unprocessable(
            "a node's snapshot counts one node (nodes = 1); merged snapshots come from keys enrolled as hubs",
            slug=ProblemType.INVALID_NODE_COUNT,
        )
    if snapshot.nodes > MAX_CHILD_NODES:
        raise Unprocessable(
            f"a hub's snapshot merges at most {MAX_CHILD_NODES} node snapshots", slug=ProblemType.INVALID_NODE_COUNT
        )
    for metric in catalog.metrics:
        cells = snapshot.metrics.get(metric.name)
        if cells is None:
            continue  # (9) refuses a missing metric
        epsilon, scale, variance = catalog.epsilon(metric), catalog.scale(metric), catalog.variance(metric)
        threshold = catalog.threshold(metric)  # 0: nodes and child hubs publish every cell
        if kind == "node":
            variance_ok = math.isclose(cells.variance, variance, rel_tol=VARIANCE_TOLERANCE)
        else:
            published = cells.val or cells.other_val
            variance_ok = not published or cells.variance >= variance * (1 - VARIANCE_TOLERANCE)
        wrong = (
            ("epsilon", f"{epsilon!r}") if cells.epsilon != epsilon
            else ("scale", f"{scale!r}") if cells.scale != scale
            else ("threshold", f"{threshold}") if cells.threshold != threshold
            else ("variance", f"{'' if kind == 'node' else 'at least '}{variance!r}") if not variance_ok
            else None
        )
        if wrong is not None:
            field, expected = wrong
            raise Unprocessable(
                f"metric {metric.name}: a {kind}'s snapshot declares the catalog's {field}, {expected}",
                slug=ProblemType.PRIVACY_PARAMETERS_MISMATCH, extra={"metric": metric.name, "field": field},
            )


def _check_cells(catalog: Catalog, snapshot: Snapshot) -> None:
    """(9) Every metric of the catalog present, every index inside its domain, every number mergeable."""
    expected = {m.name for m in catalog.metrics}
    if set(snapshot.metrics) != expected:
        raise Unprocessable("the snapshot's metrics are not the catalog's", slug=ProblemType.CELLS_OUT_OF_DOMAIN)
    for metric in catalog.metrics:
        cells = snapshot.metrics[metric.name]
        if cells.idx and cells.idx[-1] >= catalog.domain_size(metric):
            raise Unprocessable(f"metric {metric.name}: a cell index is outside its domain", slug=ProblemType.CELLS_OUT_OF_DOMAIN)
        if cells.other_idx and cells.other_idx[-1] >= catalog.prefix_size(metric):
            raise Unprocessable(
                f"metric {metric.name}: an other index is outside its prefix domain", slug=ProblemType.CELLS_OUT_OF_DOMAIN
            )
        # An `other` value's variance is up to (size of the last dimension) times the cell variance.
        if cells.variance * catalog.shape(metric)[-1] > MAX_MAGNITUDE or not _bounded(cells.val) or not _bounded(cells.other_val):
            raise Unprocessable(
                f"metric {metric.name}: a value or variance is beyond {MAX_MAGNITUDE}", slug=ProblemType.CELLS_OUT_OF_DOMAIN
            )


def _bounded(values: Sequence[int]) -> bool:
    return not values or (max(values) <= MAX_MAGNITUDE and min(values) >= -MAX_MAGNITUDE)
