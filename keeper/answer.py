"""A keeper's answer to a round: every check in order, each with its problem type; once per round, then the same bytes.

    (1) request size                              413 request-too-large (the app's body limit)
    (2) request envelope, signed by a pinned hub  400 malformed-request / invalid-signature, 403 unknown-hub
    (3) catalog known, with federation rounds     422 unknown-catalog
    (4) window ended, of a sane length            422 window-out-of-range
    (5) participants: at least min_nodes          422 too-few-nodes
    (6) each contribution, in node key id order:  403 unknown-key / revoked-key (not enrolled here)
        enrolled node, signature, body, one per   400 invalid-signature / malformed-contribution / duplicate-node
        node, this round, this catalog's length,  422 wrong-round / wrong-length
        a seed sealed to this keeper              422 not-sealed-to-keeper
    (7) the ledger: this round answered before?   same set -> the stored bytes (200); another set ->
                                                  409 round-already-answered
    (8) every seed opens                          422 unopenable-seed (`nodes` lists them; nothing stored)
    (9) A = -sum of masks + Z (OpenDP discrete Laplace at the catalog's federation scale), signed,
        recorded in the ledger before it is sent

`check` runs (2)-(8) and stores nothing: a hub asks every keeper to check a set before it
asks any to answer, so one node's bad seal never strands a round half answered.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from keeper.identity import KeeperIdentity
from keeper.metrics import KeeperMetrics
from keeper.store import AnsweredRound, KeeperStore
from protocol.catalog import Catalog
from protocol.codec import EnvelopeError
from protocol.envelope import Envelope, SignatureError
from protocol.errors import BadRequest, Conflict, Forbidden, Problem, ProblemType, Unprocessable
from protocol.keys import PublicKey
from protocol.rounds import (
    Answer,
    SealError,
    keeper_noise_scales,
    keeper_vector,
    open_seed,
    participants_digest,
    round_id,
    seal_info,
    sign_answer,
    vector_bytes,
    verify_answer,
    verify_contribution,
    verify_request,
)
from runtime.dp import NoiseSampler, opendp_laplace, privacy_loss
from runtime.registry import Registry

log = logging.getLogger("liberation.keeper.answer")

MAX_WINDOW_SECONDS = 31 * 86_400

_T = TypeVar("_T")


@dataclass(frozen=True)
class CheckedRound:
    """A request that passed (2)-(6): its round, participants (ascending) and their sealed seeds for this keeper."""

    catalog: Catalog
    window_start: int
    window_end: int
    nodes: tuple[str, ...]
    digests: tuple[str, ...]
    sealed: tuple[bytes, ...]

    @property
    def participants(self) -> str:
        return participants_digest(self.nodes, self.digests)


class Answerer:
    """Checks round requests and answers each round once; the only code that draws a keeper's noise."""

    def __init__(
        self,
        *,
        store: KeeperStore,
        registry: Registry,
        identity: KeeperIdentity,
        catalogs: Mapping[str, Catalog],
        hub_keys: Sequence[PublicKey],
        metrics: KeeperMetrics,
        max_bytes: int,
        skew_seconds: int,
        now: Callable[[], float] = time.time,
        sampler: NoiseSampler = opendp_laplace,
    ) -> None:
        self.store = store
        self.registry = registry
        self.identity = identity
        self.catalogs = catalogs
        self.hub_keys = {k.raw for k in hub_keys}
        self.metrics = metrics
        self.max_bytes = max_bytes
        self.skew = skew_seconds
        self.now = now
        self._sampler = sampler
        self._lock = threading.Lock()  # one answer computed at a time: a round is never answered twice
        for catalog in catalogs.values():
            for metric in catalog.federation_metrics:
                # OpenDP's own privacy map must certify the catalog's federation epsilon for this scale.
                certified = privacy_loss(catalog.federation_scale(metric), metric.sensitivity)
                if certified > catalog.federation_epsilon(metric) * (1 + 1e-9):
                    raise ValueError(f"metric {metric.name}: OpenDP certifies epsilon {certified} for the round")

    # ---- (2)-(8) ---------------------------------------------------------------------------

    def check(self, data: bytes) -> CheckedRound:
        """(2)-(6) and (8): a request this keeper could answer; raises (and counts) the first problem."""
        checked = self._counted(self._check, data)
        self._counted(self._open_all, checked)
        return checked

    def _counted(self, step: Callable[..., _T], *args: object) -> _T:
        try:
            return step(*args)
        except Problem as problem:
            self.metrics.refused.labels(problem.slug).inc()
            raise

    def _pinned_hub(self, key: PublicKey) -> None:
        if key.raw not in self.hub_keys:
            raise Forbidden("this keeper answers only the hubs its operator pinned", slug=ProblemType.UNKNOWN_HUB)

    def _check(self, data: bytes) -> CheckedRound:
        # (2) the request envelope, signed by a pinned hub
        try:
            _, request = verify_request(data, max_size=self.max_bytes, check_key=self._pinned_hub)
        except SignatureError as exc:
            raise BadRequest(exc.detail, slug=ProblemType.INVALID_SIGNATURE) from None
        except EnvelopeError as exc:
            raise BadRequest(exc.detail, slug=ProblemType.MALFORMED_REQUEST, extra={"reason": exc.reason}) from None
        # (3) catalog known, with federation rounds
        catalog = self.catalogs.get(request.catalog)
        if catalog is None or catalog.federation is None:
            raise Unprocessable("this keeper answers no rounds of that catalog", slug=ProblemType.UNKNOWN_CATALOG)
        # (4) window ended, sane length
        start, end = request.window_start, request.window_end
        if start % 3600 or end % 3600 or end - start > MAX_WINDOW_SECONDS:
            raise Unprocessable("a round's window is whole hours, at most 31 days", slug=ProblemType.WINDOW_OUT_OF_RANGE)
        if end > self.now() + self.skew:
            raise Unprocessable("the round's window has not ended", slug=ProblemType.WINDOW_OUT_OF_RANGE)
        # (5) enough participants
        if len(request.contributions) < catalog.federation.min_nodes:
            raise Unprocessable(
                f"a round of this catalog combines at least {catalog.federation.min_nodes} contributions",
                slug=ProblemType.TOO_FEW_NODES,
            )
        # (6) each contribution
        me = self.identity.key_id
        nodes: list[str] = []
        digests: list[str] = []
        sealed: list[bytes] = []
        for data_i in request.contributions:
            try:
                verified = verify_contribution(data_i, max_size=self.max_bytes, check_key=self._enrolled_node)
            except SignatureError as exc:
                raise BadRequest(exc.detail, slug=ProblemType.INVALID_SIGNATURE, extra=_signer(data_i)) from None
            except EnvelopeError as exc:
                raise BadRequest(exc.detail, slug=ProblemType.MALFORMED_CONTRIBUTION,
                                 extra={"reason": exc.reason, **_signer(data_i)}) from None
            c = verified.contribution
            if nodes and c.node <= nodes[-1]:
                raise BadRequest(
                    "contributions are listed once per node, by ascending node key id", slug=ProblemType.DUPLICATE_NODE
                )
            if (c.catalog, c.window_start, c.window_end) != (request.catalog, start, end):
                raise Unprocessable("a contribution is of another round", slug=ProblemType.WRONG_ROUND, extra={"node": c.node})
            if len(c.y) != 8 * catalog.federation_size:
                raise Unprocessable("a contribution's vector is not this catalog's length", slug=ProblemType.WRONG_LENGTH,
                                    extra={"node": c.node})
            mine = c.sealed_for(me)
            if mine is None:
                raise Unprocessable("a contribution holds no seed sealed to this keeper", slug=ProblemType.NOT_SEALED_TO_KEEPER,
                                    extra={"node": c.node})
            nodes.append(c.node)
            digests.append(verified.digest)
            sealed.append(mine)
        return CheckedRound(catalog, start, end, tuple(nodes), tuple(digests), tuple(sealed))

    def _enrolled_node(self, key: PublicKey) -> None:
        try:
            self.registry.require_active(key, ("node",))
        except Forbidden as exc:  # named, so the hub can leave the node out
            raise Forbidden(exc.detail, slug=exc.slug, extra={"node": key.key_id}) from None

    def _open_all(self, checked: CheckedRound) -> list[bytes]:
        """(8) every seed of the set opens with this keeper's key; 422 naming those that do not."""
        seeds: list[bytes] = []
        failed: list[str] = []
        round_bytes = round_id(checked.catalog.hash, checked.window_start, checked.window_end)
        for node, sealed in zip(checked.nodes, checked.sealed, strict=False):
            try:
                seeds.append(open_seed(sealed, self.identity.sealing, seal_info(round_bytes, node, self.identity.key_id)))
            except SealError:
                failed.append(node)
        if failed:
            raise Unprocessable(
                f"{len(failed)} sealed seed(s) do not open with this keeper's key: leave those nodes out",
                slug=ProblemType.UNOPENABLE_SEED, extra={"nodes": failed},
            )
        return seeds

    # ---- (7) and (9) ----------------------------------------------------------------------

    def answer(self, data: bytes) -> tuple[bytes, bool]:
        """The signed answer for the request's round and set, and whether it was made now (False: the stored bytes)."""
        started = time.perf_counter()
        checked = self._counted(self._check, data)
        with self._lock:
            held = self.store.answered(checked.catalog.hash, checked.window_start, checked.window_end)
            if held is not None:
                return self._repeat(held, checked), False
            seeds = self._counted(self._open_all, checked)
            envelope = self._make(checked, seeds)
            kept = self.store.record(AnsweredRound(
                checked.catalog.hash, checked.window_start, checked.window_end, checked.participants,
                len(checked.nodes), _digest_of(envelope), envelope, int(self.now()),
            ))
        self.metrics.answered.inc()
        self.metrics.answer_seconds.observe(time.perf_counter() - started)
        log.info("round answered", extra={"catalog": checked.catalog.hash, "window_start": checked.window_start,
                                          "nodes": len(checked.nodes)})
        return kept.envelope, True

    def _repeat(self, held: AnsweredRound, checked: CheckedRound) -> bytes:
        if held.participants != checked.participants:
            self.metrics.refused.labels("round-already-answered").inc()
            raise Conflict(
                "this keeper answered this round for another participant set; it answers a round once",
                slug=ProblemType.ROUND_ALREADY_ANSWERED,
            )
        self.metrics.repeated.inc()
        return held.envelope

    def _make(self, checked: CheckedRound, seeds: list[bytes]) -> bytes:
        catalog = checked.catalog
        a = keeper_vector(catalog, seeds, keeper_noise(catalog, self._sampler))
        seeds.clear()
        now = int(self.now())
        answer = Answer(
            keeper=self.identity.key_id, catalog=catalog.hash, window_start=checked.window_start,
            window_end=checked.window_end, created=now - now % 60, nodes=checked.nodes, digests=checked.digests,
            noise=keeper_noise_scales(catalog), a=vector_bytes(a),
        )
        return sign_answer(answer, self.identity.signing)


def keeper_noise(catalog: Catalog, sampler: NoiseSampler = opendp_laplace) -> list[int]:
    """Z: one discrete Laplace draw per cell of the round's vector (zeros included), at the federation scale."""
    noise: list[int] = []
    for metric in catalog.federation_metrics:
        noise.extend(sampler([0] * catalog.domain_size(metric), catalog.federation_scale(metric)))
    return noise


def _signer(data: bytes) -> dict[str, str]:
    """`{"node": key id}` of the key an envelope names, when its headers read; else nothing."""
    try:
        return {"node": Envelope.from_bytes(data, max_size=len(data)).public_key.key_id}
    except EnvelopeError:
        return {}


def _digest_of(envelope: bytes) -> str:
    return verify_answer(envelope, max_size=len(envelope)).digest
