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

(10) and (11) are federation/intake_commit.py. This module stays whole past ~400 lines on
purpose: checks (1)-(9) read in step order, beside the scheduling that decides where each runs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from federation.archive import Archive
from federation.intake_commit import Checked, IntakeCommit, IntakeResult, Outcome
from federation.logwriter import LogWriter
from federation.metrics import HubMetrics
from federation.store import HubStore
from protocol.catalog import Catalog
from protocol.codec import EnvelopeError
from protocol.envelope import Envelope, SignatureError
from protocol.errors import (
    BadRequest,
    PayloadTooLarge,
    Problem,
    ProblemType,
    ServiceUnavailable,
    Unprocessable,
)
from protocol.snapshot import Snapshot, max_envelope_size
from protocol.windows import is_window_start
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


class Intake:
    """Checks snapshots, (1)-(9), and hands them in batches to (10) and (11) (`committer`, federation/intake_commit.py)."""

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
        self.committer = IntakeCommit(self.log, archive, now)
        self.registry = registry
        self.catalogs = catalogs
        self.metrics = metrics
        self.max_bytes = max_bytes
        self.horizon = horizon_seconds
        self.skew = skew_seconds
        self.now = now
        self.max_batch = max_batch
        self._on_accept = on_accept
        self._queue: GroupQueue[Checked] = GroupQueue(max_batch)
        self._commit_task: asyncio.Task[None] | None = None
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
        if self._commit_task is None or self._commit_task.done():
            # Runs while envelopes are queued, then ends: nothing to start or stop with the app.
            self._commit_task = loop.create_task(self._commit_queued(), name="hub-intake-commit")
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
                outcomes = await asyncio.to_thread(self.committer.store, checked)
            except Exception as exc:  # noqa: BLE001 - every waiter must hear of it
                log.error("commit of %d snapshots failed: %s", len(checked), type(exc).__name__)
                self._queue.settle(group, error=StorageUnavailable(type(exc).__name__))
                continue
            if archiving is not None:
                await _archived(archiving)
            self._count(checked, outcomes)
            self._queue.settle(group, results=outcomes)
            archiving = asyncio.ensure_future(asyncio.to_thread(self.committer.archive_accepted, checked, outcomes))

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
        outcomes = self.committer.store(batch)
        self.committer.archive_accepted(batch, outcomes)
        self._count(batch, outcomes)
        return outcomes

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

async def _archived(archiving: asyncio.Future[None]) -> None:
    try:
        await archiving
    except Exception as exc:  # noqa: BLE001 - committed and answered; the archive can be rebuilt from the store
        log.error("archive write failed: %s", type(exc).__name__)


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
