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

A round opens with its first contribution (federation/rounds.py decides its deadline). Nothing
of a refused contribution is stored; an equivocation leaves an incident row.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import duckdb

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
    VerifiedContribution,
    verify_contribution,
)
from runtime.registry import Registry

ENVELOPE_OVERHEAD = 1024
"""Bytes of a contribution envelope besides its vector and sealed seeds (headers, ids, signature), generously."""


def contribution_limit(catalogs: Mapping[str, Catalog]) -> int:
    """The largest contribution envelope intake reads: twice the largest a catalog's rounds produce."""
    sizes = [8 * c.federation_size + MAX_KEEPERS * (SEALED_SIZE + 48) + ENVELOPE_OVERHEAD
             for c in catalogs.values() if c.federation is not None]
    return 2 * max(sizes, default=ENVELOPE_OVERHEAD)


@dataclass(frozen=True)
class ContributionResult:
    status: str  # "accepted" or "duplicate"
    node: str
    window_start: int
    digest: str
    log_seq: int | None


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
        self._lock = threading.Lock()  # (10)-(12) for one contribution at a time: rounds open once

    def accept(self, data: bytes) -> ContributionResult:
        """Every check, then the commit; raises the first check's Problem (counted)."""
        try:
            verified, catalog, keepers = self._check(data)
            with self._lock:
                return self._commit(verified, catalog, keepers)
        except Problem as problem:
            self.metrics.contributions_rejected.labels(problem.slug).inc()
            raise

    def _enrolled_node(self, key: PublicKey) -> None:
        self.registry.require_active(key, ("node",))

    def _check(self, data: bytes) -> tuple[VerifiedContribution, Catalog, list[str]]:
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

    def _commit(self, verified: VerifiedContribution, catalog: Catalog, active: list[str]) -> ContributionResult:
        received = int(self.now())
        with self.log.transaction() as tx:
            outcome = self._store(tx, verified, catalog, active, received)
        if isinstance(outcome, Problem):
            raise outcome  # after the commit: an equivocation's incident row is kept
        if outcome.status == "accepted":
            self.metrics.contributions_accepted.inc()
        return outcome

    def _store(
        self, tx: duckdb.DuckDBPyConnection, verified: VerifiedContribution, catalog: Catalog, active: list[str],
        received: int,
    ) -> ContributionResult | Problem:
        c = verified.contribution
        key = [c.catalog, c.window_start, c.window_end]
        row = tx.execute("SELECT state, keepers FROM rounds WHERE catalog = ? AND window_start = ? AND window_end = ?",
                         key).fetchall()
        # (9) sealed to the round's keepers: those of the hub when the round opened
        keepers = json.loads(row[0][1]) if row else active
        if not keepers:
            raise Unprocessable("this hub has no active keeper: no round can open", slug=ProblemType.KEEPERS_MISMATCH)
        if list(c.keepers) != keepers:
            raise Unprocessable(
                "the contribution is not sealed to this round's keepers (the node's pinned keepers, or the keys "
                "it learned, differ from the hub's)", slug=ProblemType.KEEPERS_MISMATCH, extra={"keepers": keepers},
            )
        # (11) the same node and round before: the same bytes are a replay, others an equivocation
        held = tx.execute(
            "SELECT envelope, digest FROM round_contributions WHERE catalog = ? AND window_start = ? "
            "AND window_end = ? AND key_id = ?", [*key, c.node],
        ).fetchall()
        if held:
            if bytes(held[0][0]) == verified.envelope:
                return ContributionResult("duplicate", c.node, c.window_start, verified.digest, None)
            tx.execute("INSERT INTO incidents VALUES ('contribution-equivocation', ?, ?, ?, ?, ?)",
                       [c.node, c.window_start, str(held[0][1]), verified.digest, received])
            return Conflict("this node already contributed different bytes to this round", slug=ProblemType.EQUIVOCATION,
                            extra={"window_start": c.window_start})
        # (10) the round is open, or opens now
        if not row:
            tx.execute(
                "INSERT INTO rounds VALUES (?, ?, ?, 'open', ?, ?, ?, NULL, NULL, NULL, NULL)",
                [*key, received, self.deadline(c.window_end, received), json.dumps(keepers)],
            )
        elif row[0][0] != "open":
            raise Conflict("this round has closed: contributions after its deadline are out of it",
                           slug=ProblemType.ROUND_CLOSED, extra={"window_start": c.window_start})
        # (12) the contribution and its log entry, together
        tx.execute("INSERT INTO round_contributions VALUES (?, ?, ?, ?, ?, ?, ?)",
                   [*key, c.node, verified.digest, verified.envelope, received])
        seq = self.log.append(tx, [{
            "kind": "contribution", "node": c.node, "window_start": c.window_start, "window_end": c.window_end,
            "catalog": c.catalog, "digest": verified.digest,
            "epsilon": {m.name: catalog.federation_epsilon(m) for m in catalog.federation_metrics},
            "accepted": received,
        }])[0]
        return ContributionResult("accepted", c.node, c.window_start, verified.digest, seq)
