"""Contribution intake: a node's masked vector for a federation round, every check in order.

    (1) size limit                            413 contribution-too-large
    (2) envelope layout                       400 malformed-envelope
    (3) key usable, enrolled as a node        400 invalid-signature (unusable key), 403 unknown-key / revoked-key
    (4) signature over the bytes received     400 invalid-signature / key-mismatch
    (5) body decodes to a contribution        400 malformed-contribution
    (6) catalog known, with rounds            422 unknown-catalog
    (7) window sane (ended, in the horizon)   422 window-out-of-range
    (8) the vector is the catalog's length    422 wrong-length
    (9) sealed to the hub's active keepers    422 keepers-mismatch (the round's keepers, once it is open)
    (10) the round takes contributions        409 round-closed (its deadline passed: late nodes are out)
    (11) same node and round seen before:     identical bytes -> 200 (idempotent); different -> 409 equivocation
    (12) commit: the contribution and its transparency log entry, in one transaction

(1)-(9) run per request; (10)-(12) as a group commit (runtime/groupcommit.py): contributions that
arrive while a transaction is being written go together into the next one, so 1,000 nodes
pushing at a window's end cost a few transactions, not 1,000. A 202 follows the commit.

A round opens with its first contribution (federation/rounds.py decides its deadline). Nothing
of a refused contribution is stored; an equivocation leaves an incident row.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import duckdb
import pyarrow as pa

from federation.keepers import Keepers
from federation.logwriter import LogWriter
from federation.metrics import HubMetrics
from federation.store import HubStore
from protocol.catalog import Catalog
from protocol.codec import EnvelopeError
from protocol.envelope import SignatureError
from protocol.errors import (
    BadRequest,
    Conflict,
    PayloadTooLarge,
    Problem,
    ProblemType,
    Unprocessable,
)
from protocol.keys import PublicKey
from protocol.rounds import (
    MAX_KEEPERS,
    SEALED_SIZE,
    Contribution,
    VerifiedContribution,
    verify_contribution,
)
from runtime.groupcommit import GroupQueue, StorageUnavailable, storage_unavailable
from runtime.registry import Registry

ENVELOPE_OVERHEAD = 1024
"""Bytes of a contribution envelope besides its vector and sealed seeds (headers, ids, signature), generously."""


def contribution_limit(catalogs: Mapping[str, Catalog]) -> int:
    """The largest contribution envelope intake reads: twice the largest a catalog's rounds produce."""
    sizes = [8 * c.federation_size + MAX_KEEPERS * (SEALED_SIZE + 48) + ENVELOPE_OVERHEAD
             for c in catalogs.values() if c.federation is not None]
    return 2 * max(sizes, default=ENVELOPE_OVERHEAD)


MAX_BATCH = 256
"""Most contributions committed in one transaction."""

log = logging.getLogger("liberation.hub.contributions")


@dataclass(frozen=True)
class ContributionResult:
    status: str  # "accepted" or "duplicate"
    node: str
    window_start: int
    digest: str
    log_seq: int | None


_Checked = tuple[VerifiedContribution, Catalog, list[str]]
"""A contribution through checks (1)-(9): verified, its catalog, the hub's active keepers when checked."""


class ContributionIntake:
    """Verifies and stores contributions; the only code that writes `round_contributions` and opens rounds."""

    def __init__(
        self,
        *,
        store: HubStore,
        registry: Registry,
        keepers: Keepers,
        catalogs: Mapping[str, Catalog],
        log: LogWriter,
        metrics: HubMetrics,
        horizon_seconds: int,
        skew_seconds: int,
        deadline: Callable[[int, int], int],
        now: Callable[[], float] = time.time,
    ) -> None:
        """`deadline(window_end, now)`: when a round opened now closes (federation/rounds.py)."""
        self.store = store
        self.registry = registry
        self.keepers = keepers
        self.catalogs = catalogs
        self.log = log
        self.metrics = metrics
        self.max_bytes = contribution_limit(catalogs)
        self.horizon = horizon_seconds
        self.skew = skew_seconds
        self.deadline = deadline
        self.now = now
        self._queue: GroupQueue[_Checked] = GroupQueue(MAX_BATCH)
        self._committer: asyncio.Task[None] | None = None

    def accept(self, data: bytes) -> ContributionResult:
        """Every check, then the commit, alone; raises the first check's Problem (counted)."""
        return self._outcome(self._commit([self._counted(data)])[0])

    async def submit(self, data: bytes) -> ContributionResult:
        """`accept` for a server: the checks, then a place in the next group commit; answered after it."""
        checked = await asyncio.to_thread(self._counted, data)  # the keepers are read from the store
        future = self._queue.put(checked, 1)
        if self._committer is None or self._committer.done():
            # Runs while contributions are queued, then ends: nothing to start or stop with the app.
            self._committer = asyncio.get_running_loop().create_task(self._commit_queued(), name="contribution-commit")
        try:
            outcome: ContributionResult | Problem = await future
        except StorageUnavailable:
            self.metrics.contributions_rejected.labels(ProblemType.STORAGE_UNAVAILABLE).inc()
            raise storage_unavailable() from None
        return self._outcome(outcome)

    def _counted(self, data: bytes) -> _Checked:
        try:
            return self._check(data)
        except Problem as problem:
            self.metrics.contributions_rejected.labels(problem.slug).inc()
            raise

    def _outcome(self, outcome: ContributionResult | Problem) -> ContributionResult:
        if isinstance(outcome, Problem):
            self.metrics.contributions_rejected.labels(outcome.slug).inc()
            raise outcome
        if outcome.status == "accepted":
            self.metrics.contributions_accepted.inc()
        return outcome

    async def _commit_queued(self) -> None:
        while len(self._queue):
            group = await self._queue.take()
            try:
                outcomes = await asyncio.to_thread(self._commit, group.items)
            except Exception as exc:  # noqa: BLE001 - every waiter must hear of it
                log.error("commit of %d contributions failed: %s", len(group.items), type(exc).__name__)
                self._queue.settle(group, error=StorageUnavailable(type(exc).__name__))
                continue
            self._queue.settle(group, results=outcomes)

    def _enrolled_node(self, key: PublicKey) -> None:
        self.registry.require_active(key, ("node",))

    def _check(self, data: bytes) -> _Checked:
        # (1) size, before anything is parsed
        if len(data) > self.max_bytes:
            raise PayloadTooLarge(f"a contribution is at most {self.max_bytes} bytes", slug=ProblemType.CONTRIBUTION_TOO_LARGE)
        # (2)-(5) layout, usable key, enrolled node, signature over the bytes received, body
        try:
            verified = verify_contribution(data, max_size=self.max_bytes, check_key=self._enrolled_node)
        except SignatureError as exc:
            slug = ProblemType.KEY_MISMATCH if exc.reason == "key-mismatch" else ProblemType.INVALID_SIGNATURE
            raise BadRequest(exc.detail, slug=slug) from None
        except EnvelopeError as exc:
            slug = ProblemType.MALFORMED_CONTRIBUTION if exc.in_body else ProblemType.MALFORMED_ENVELOPE
            raise BadRequest(exc.detail, slug=slug, extra={"reason": exc.reason}) from None
        c = verified.contribution
        # (6) catalog known, with rounds
        catalog = self.catalogs.get(c.catalog)
        if catalog is None or catalog.federation is None:
            raise Unprocessable("this hub runs no rounds of that catalog", slug=ProblemType.UNKNOWN_CATALOG)
        # (7) window sane
        now = self.now()
        if c.window_start % 3600 or c.window_end % 3600 or c.window_end - c.window_start > 31 * 86_400:
            raise Unprocessable("a round's window is whole hours, at most 31 days", slug=ProblemType.WINDOW_OUT_OF_RANGE)
        if c.window_end > now + self.skew:
            raise Unprocessable("the window has not ended yet", slug=ProblemType.WINDOW_OUT_OF_RANGE)
        if c.window_start < now - self.horizon:
            raise Unprocessable("the window is older than this hub's horizon", slug=ProblemType.WINDOW_OUT_OF_RANGE)
        # (8) the vector covers the federation metrics' domains
        if len(c.y) != 8 * catalog.federation_size:
            raise Unprocessable(
                f"this catalog's contributions hold {catalog.federation_size} cells", slug=ProblemType.WRONG_LENGTH
            )
        # (9) sealed to this hub's active keepers (checked against the round's own once it is open)
        keepers = [k.key_id for k in self.keepers.active()]
        return verified, catalog, keepers

    def _commit(self, batch: Sequence[_Checked]) -> list[ContributionResult | Problem]:
        """(9)-(12) for checked contributions, in order, in one transaction; an outcome each.

        The batch's rounds and earlier contributions are read in two queries and its new
        contributions written in one: a statement costs about as much for one row as for many.
        """
        received = int(self.now())
        outcomes: list[ContributionResult | Problem] = []
        fresh: list[tuple[int, VerifiedContribution, Catalog]] = []
        incidents: list[list[object]] = []
        with self.log.transaction() as tx:
            rounds, held = self._read(tx, [verified.contribution for verified, _, _ in batch])
            opened: list[list[object]] = []
            for verified, catalog, active in batch:
                try:
                    outcome = self._decide(verified, active, rounds, held, opened, incidents, received)
                except Problem as problem:  # refused before anything of it was written
                    outcome = problem
                if outcome is None:
                    fresh.append((len(outcomes), verified, catalog))
                    outcome = ContributionResult("accepted", verified.contribution.node,
                                                 verified.contribution.window_start, verified.digest, None)
                outcomes.append(outcome)
            for row in opened:
                tx.execute("INSERT INTO rounds VALUES (?, ?, ?, 'open', ?, ?, ?, NULL, NULL, NULL, NULL)", row)
            for incident in incidents:
                tx.execute("INSERT INTO incidents VALUES ('contribution-equivocation', ?, ?, ?, ?, ?)", incident)
            if fresh:
                self._insert(tx, [v for _, v, _ in fresh], received)
                seqs = self.log.append(tx, [_log_entry(v, catalog, received) for _, v, catalog in fresh])
                for (i, _, _), seq in zip(fresh, seqs, strict=True):
                    outcome = outcomes[i]
                    assert isinstance(outcome, ContributionResult)
                    outcomes[i] = replace(outcome, log_seq=seq)
        return outcomes

    def _read(
        self, tx: duckdb.DuckDBPyConnection, contributions: Sequence[Contribution]
    ) -> tuple[dict[tuple[str, int, int], tuple[str, list[str]]], dict[tuple[str, int, int, str], tuple[bytes, str]]]:
        """The batch's rounds (state, keepers) and the contributions already held for its (round, node)s."""
        incoming = pa.table({
            "catalog": [c.catalog for c in contributions],
            "window_start": pa.array([c.window_start for c in contributions], pa.int64()),
            "window_end": pa.array([c.window_end for c in contributions], pa.int64()),
            "key_id": [c.node for c in contributions],
        })
        tx.register("incoming_contributions", incoming)
        try:
            round_rows = tx.execute(
                "SELECT r.catalog, r.window_start, r.window_end, r.state, r.keepers FROM rounds r "
                "SEMI JOIN incoming_contributions i USING (catalog, window_start, window_end)"
            ).fetchall()
            held_rows = tx.execute(
                "SELECT c.catalog, c.window_start, c.window_end, c.key_id, c.envelope, c.digest FROM round_contributions c "
                "SEMI JOIN incoming_contributions i USING (catalog, window_start, window_end, key_id)"
            ).fetchall()
        finally:
            tx.unregister("incoming_contributions")
        rounds = {(str(c), int(s), int(e)): (str(state), list(json.loads(k))) for c, s, e, state, k in round_rows}
        held = {(str(c), int(s), int(e), str(k)): (bytes(env), str(d)) for c, s, e, k, env, d in held_rows}
        return rounds, held

    def _decide(
        self, verified: VerifiedContribution, active: list[str],
        rounds: dict[tuple[str, int, int], tuple[str, list[str]]], held: dict[tuple[str, int, int, str], tuple[bytes, str]],
        opened: list[list[object]], incidents: list[list[object]], received: int,
    ) -> ContributionResult | Problem | None:
        """(9)-(11) for one contribution against the store and the batch before it: None means store it."""
        c = verified.contribution
        key = (c.catalog, c.window_start, c.window_end)
        # (9) sealed to the round's keepers: those of the hub when the round opened
        state, keepers = rounds.get(key, ("open", active))
        if not keepers:
            raise Unprocessable("this hub has no active keeper: no round can open", slug=ProblemType.KEEPERS_MISMATCH)
        if list(c.keepers) != keepers:
            raise Unprocessable(
                "the contribution is not sealed to this round's keepers (the node's pinned keepers, or the keys "
                "it learned, differ from the hub's)", slug=ProblemType.KEEPERS_MISMATCH, extra={"keepers": keepers},
            )
        # (11) the same node and round before: the same bytes are a replay, others an equivocation
        earlier = held.get((*key, c.node))
        if earlier is not None:
            if earlier[0] == verified.envelope:
                return ContributionResult("duplicate", c.node, c.window_start, verified.digest, None)
            # The incident row is committed; the offer itself is refused.
            incidents.append([c.node, c.window_start, earlier[1], verified.digest, received])
            return Conflict("this node already contributed different bytes to this round", slug=ProblemType.EQUIVOCATION,
                            extra={"window_start": c.window_start})
        # (10) the round is open, or opens now
        if key not in rounds:
            opened.append([*key, received, self.deadline(c.window_end, received), json.dumps(keepers)])
            rounds[key] = ("open", keepers)
        elif state != "open":
            raise Conflict("this round has closed: contributions after its deadline are out of it",
                           slug=ProblemType.ROUND_CLOSED, extra={"window_start": c.window_start})
        held[(*key, c.node)] = (verified.envelope, verified.digest)
        return None

    def _insert(self, tx: duckdb.DuckDBPyConnection, accepted: Sequence[VerifiedContribution], received: int) -> None:
        contributions = [v.contribution for v in accepted]
        rows = pa.table({
            "catalog": [c.catalog for c in contributions],
            "window_start": pa.array([c.window_start for c in contributions], pa.int64()),
            "window_end": pa.array([c.window_end for c in contributions], pa.int64()),
            "key_id": [c.node for c in contributions],
            "digest": [v.digest for v in accepted],
            "envelope": pa.array([v.envelope for v in accepted], pa.binary()),
            "received": pa.array([received] * len(accepted), pa.int64()),
        })
        tx.register("accepted_contributions", rows)
        try:
            tx.execute("INSERT INTO round_contributions SELECT * FROM accepted_contributions")
        finally:
            tx.unregister("accepted_contributions")


def _log_entry(verified: VerifiedContribution, catalog: Catalog, received: int) -> dict[str, object]:
    """(12) a contribution's transparency log entry: who, which round, what digest, the federation epsilon per metric."""
    c = verified.contribution
    return {
        "kind": "contribution", "node": c.node, "window_start": c.window_start, "window_end": c.window_end,
        "catalog": c.catalog, "digest": verified.digest,
        "epsilon": {m.name: catalog.federation_epsilon(m) for m in catalog.federation_metrics}, "accepted": received,
    }
