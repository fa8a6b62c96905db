"""Federation rounds at the hub: open -> closed at the deadline -> checked -> asked -> published (or failed).

    open       takes contributions (federation/contributions.py) until its deadline:
               max(window end + close_after, first contribution + collect)
    closed     the deadline passed: the participant set is every contribution received (stored);
               each keeper checks it (POST /v1/rounds/check, stores nothing); a node whose seed a
               keeper cannot open, or that a keeper does not know, is left out and the check runs
               again; fewer than the catalog's min_nodes left -> failed
    asked      every keeper checked the same set: it is fixed for good, and each keeper is asked
               once for its answer (POST /v1/rounds/answer); a keeper that is down is asked again
               later, and gives the same bytes whenever it is asked
    published  every keeper answered: aggregate = sum y_i + sum A_k (mod 2^64, as int64), stored
               with the round's log entry in one transaction
    failed     never combined (too few nodes, a keeper gone or refusing); the note says why

Every state change is one DuckDB transaction, and nothing is kept only in memory: a hub killed
at any point takes up where it was (a keeper asked twice for the same set answers the same bytes).
Contributions, keeper answers and the published round are transparency log entries, so anyone can
recompute the aggregate from the signed parts (liberation/logaudit.py). Stored rounds are read
through federation/round_records.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp
import numpy as np

from federation.keepers import KeeperEndpoint, Keepers
from federation.logwriter import LogWriter
from federation.metrics import HubMetrics
from federation.round_records import Round, RoundRecords
from federation.settings import RoundsSettings
from federation.store import HubStore
from protocol.catalog import Catalog
from protocol.codec import EnvelopeError
from protocol.keys import PublicKey, SigningKey
from protocol.rounds import (
    RoundRequest,
    combine,
    keeper_noise_scales,
    round_document,
    sign_request,
    verify_answer,
    verify_contribution,
)

log = logging.getLogger("liberation.hub.rounds")

MAX_ANSWER_BYTES = 64 * 1024 * 1024
MAX_CHECK_PASSES = 4
"""Checks of a closed round per pass: each may leave out nodes whose seeds a keeper cannot open."""


class Rounds:
    """Moves rounds through their states; the only code that writes `rounds` after they open, and `round_answers`."""

    def __init__(
        self,
        *,
        store: HubStore,
        log: LogWriter,
        keepers: Keepers,
        catalogs: Mapping[str, Catalog],
        key: SigningKey,
        metrics: HubMetrics,
        settings: RoundsSettings,
        now: Callable[[], float] = time.time,
        on_publish: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.log = log
        self.keepers = keepers
        self.catalogs = catalogs
        self.key = key
        self.metrics = metrics
        self.settings = settings
        self.now = now
        self._on_publish = on_publish
        self.records = RoundRecords(store)

    def deadline(self, window_end: int, opened: int) -> int:
        """When a round opened at `opened` closes: after its nodes had time to export and push."""
        return max(window_end + self.settings.close_after_seconds, opened + self.settings.collect_seconds)

    # ---- the state machine ----------------------------------------------------------------

    async def step(self, session: aiohttp.ClientSession) -> None:
        """One pass: close rounds past their deadline, check closed ones with the keepers, ask for answers, publish."""
        await asyncio.to_thread(self.close_due)
        for rnd in await asyncio.to_thread(self.records.rounds, ("closed",)):
            await self._check(session, rnd)
        for rnd in await asyncio.to_thread(self.records.rounds, ("asked",)):
            await self._ask(session, rnd)

    def close_due(self) -> list[Round]:
        """Close every open round past its deadline: its participants are the contributions it has."""
        now = int(self.now())
        closed = []
        for rnd in self.records.rounds(("open",)):
            if rnd.deadline > now:
                continue
            with self.store.transaction() as tx:
                rows = tx.execute(
                    "SELECT key_id, digest FROM round_contributions WHERE catalog = ? AND window_start = ? "
                    "AND window_end = ? ORDER BY key_id", rnd.key,
                ).fetchall()
                tx.execute(
                    "UPDATE rounds SET state = 'closed', participants = ? WHERE catalog = ? AND window_start = ? "
                    "AND window_end = ? AND state = 'open'",
                    [json.dumps([[str(k), str(d)] for k, d in rows]), *rnd.key],
                )
            self.metrics.rounds.labels("closed").inc()
            log.info("round closed", extra={"catalog": rnd.catalog, "window_start": rnd.window_start, "nodes": len(rows)})
            closed.append(rnd)
        return closed

    def _fail(self, rnd: Round, note: str) -> None:
        with self.store.transaction() as tx:
            tx.execute("UPDATE rounds SET state = 'failed', note = ? WHERE catalog = ? AND window_start = ? "
                       "AND window_end = ?", [note, *rnd.key])
        self.metrics.rounds.labels("failed").inc()
        log.error("round failed: %s", note, extra={"catalog": rnd.catalog, "window_start": rnd.window_start})

    def _set_participants(self, rnd: Round, participants: Sequence[tuple[str, str]], state: str) -> Round:
        with self.store.transaction() as tx:
            tx.execute("UPDATE rounds SET state = ?, participants = ? WHERE catalog = ? AND window_start = ? "
                       "AND window_end = ?", [state, json.dumps([list(p) for p in participants]), *rnd.key])
        return Round(rnd.catalog, rnd.window_start, rnd.window_end, state, rnd.opened, rnd.deadline, rnd.keepers,
                     tuple(participants), rnd.published, rnd.note)

    def _endpoints(self, rnd: Round) -> list[KeeperEndpoint] | None:
        """The round's keepers, all still active; None (the round failed) if one is gone."""
        endpoints = []
        for keeper in rnd.keepers:
            endpoint = self.keepers.get(keeper)
            if endpoint is None:
                self._fail(rnd, f"keeper {keeper} is no longer enrolled: its seeds cannot be opened")
                return None
            endpoints.append(endpoint)
        return endpoints

    def _request(self, rnd: Round) -> bytes:
        assert rnd.participants is not None
        parts = self.records.contributions(rnd, [n for n, _ in rnd.participants])
        request = RoundRequest(rnd.catalog, rnd.window_start, rnd.window_end, tuple(e for _, _, e in parts))
        return sign_request(request, self.key)

    async def _post(self, session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[int | None, bytes]:
        try:
            async with session.post(
                url, data=body, headers={"Content-Type": "application/msgpack"}, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.settings.keeper_timeout_seconds),
            ) as resp:
                data = await resp.content.read(MAX_ANSWER_BYTES + 1)
                return resp.status, data
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("a keeper did not answer; asked again later", extra={"reason": type(exc).__name__})
            self.metrics.keeper_requests.labels("unreachable").inc()
            return None, b""

    async def _check(self, session: aiohttp.ClientSession, rnd: Round) -> None:
        """Have every keeper check the set, leaving out nodes one cannot use; then fix it (asked)."""
        catalog = self.catalogs.get(rnd.catalog)
        if catalog is None or catalog.federation is None:
            await asyncio.to_thread(self._fail, rnd, "the hub no longer runs rounds of this catalog")
            return
        endpoints = await asyncio.to_thread(self._endpoints, rnd)
        if endpoints is None:
            return
        for _ in range(MAX_CHECK_PASSES):
            assert rnd.participants is not None
            if len(rnd.participants) < catalog.federation.min_nodes:
                await asyncio.to_thread(
                    self._fail, rnd, f"{len(rnd.participants)} contribution(s), fewer than the {catalog.federation.min_nodes} "
                    "a round combines")
                return
            body = await asyncio.to_thread(self._request, rnd)
            dropped: set[str] = set()
            for endpoint in endpoints:
                status, data = await self._post(session, endpoint.url + "/v1/rounds/check", body)
                if status is None or status >= 500 or status in (408, 429):
                    return  # asked again next pass
                if status == 200:
                    self.metrics.keeper_requests.labels("checked").inc()
                    continue
                problem = _problem(data)
                left_out = _named_nodes(problem) & {n for n, _ in rnd.participants}
                self.metrics.keeper_requests.labels("refused").inc()
                if not left_out:
                    await asyncio.to_thread(self._fail, rnd, f"keeper {endpoint.key_id} refused the round: "
                                            f"{problem.get('type', status)}")
                    return
                log.warning("a keeper cannot use some contributions; they are left out",
                            extra={"keeper": endpoint.key_id, "nodes": sorted(left_out), "reason": problem.get("type")})
                dropped |= left_out
            if not dropped:
                await asyncio.to_thread(self._set_participants, rnd, rnd.participants, "asked")
                self.metrics.rounds.labels("asked").inc()
                rnd = Round(rnd.catalog, rnd.window_start, rnd.window_end, "asked", rnd.opened, rnd.deadline,
                            rnd.keepers, rnd.participants, rnd.published, rnd.note)
                await self._ask(session, rnd)
                return
            assert rnd.participants is not None
            kept = [p for p in rnd.participants if p[0] not in dropped]
            rnd = await asyncio.to_thread(self._set_participants, rnd, kept, "closed")

    async def _ask(self, session: aiohttp.ClientSession, rnd: Round) -> None:
        """Ask each keeper without an answer for it; publish once all answered."""
        catalog = self.catalogs.get(rnd.catalog)
        endpoints = await asyncio.to_thread(self._endpoints, rnd)
        if endpoints is None or catalog is None:
            return
        have = {k for k, _, _ in await asyncio.to_thread(self.records.answers, rnd)}
        body = b""
        for endpoint in endpoints:
            if endpoint.key_id in have:
                continue
            body = body or await asyncio.to_thread(self._request, rnd)
            status, data = await self._post(session, endpoint.url + "/v1/rounds/answer", body)
            if status is None or status >= 500 or status in (408, 429):
                continue  # asked again next pass: it answers the same bytes
            if status != 200:
                self.metrics.keeper_requests.labels("refused").inc()
                await asyncio.to_thread(self._fail, rnd, f"keeper {endpoint.key_id} refused to answer: "
                                        f"{_problem(data).get('type', status)}")
                return
            try:
                digest = await asyncio.to_thread(self._take_answer, rnd, catalog, endpoint, data)
            except ValueError as exc:
                await asyncio.to_thread(self._fail, rnd, f"keeper {endpoint.key_id}'s answer is unusable: {exc}")
                return
            self.metrics.keeper_requests.labels("answered").inc()
            log.info("keeper answered", extra={"keeper": endpoint.key_id, "window_start": rnd.window_start,
                                               "digest": digest})
            have.add(endpoint.key_id)
        if have >= set(rnd.keepers):
            await asyncio.to_thread(self._publish, rnd, catalog)

    def _take_answer(self, rnd: Round, catalog: Catalog, endpoint: KeeperEndpoint, data: bytes) -> str:
        """Verify a keeper's answer against the round, then store it with its log entry; its digest."""
        assert rnd.participants is not None

        def its_key(key: PublicKey) -> None:
            if key != endpoint.statement.identity:
                raise ValueError("signed by another key than the keeper's")

        try:
            verified = verify_answer(data, max_size=MAX_ANSWER_BYTES, check_key=its_key)
        except EnvelopeError as exc:
            raise ValueError(f"it does not verify ({exc.reason})") from None
        answer = verified.answer
        if (answer.catalog, answer.window_start, answer.window_end) != (rnd.catalog, rnd.window_start, rnd.window_end):
            raise ValueError("it is of another round")
        if list(zip(answer.nodes, answer.digests, strict=False)) != [tuple(p) for p in rnd.participants]:
            raise ValueError("it is for another participant set")
        if len(answer.a) != 8 * catalog.federation_size:
            raise ValueError("its vector is not this catalog's length")
        if answer.noise != keeper_noise_scales(catalog):
            raise ValueError("its noise is not at the catalog's federation scales")
        received = int(self.now())
        with self.log.transaction() as tx:
            tx.execute("INSERT INTO round_answers VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                       [*rnd.key, answer.keeper, verified.digest, verified.envelope, received])
            self.log.append(tx, [{
                "kind": "keeper-answer", "node": answer.keeper, "window_start": rnd.window_start,
                "window_end": rnd.window_end, "catalog": rnd.catalog, "digest": verified.digest, "epsilon": {},
                "accepted": received,
            }])
        return verified.digest

    def _publish(self, rnd: Round, catalog: Catalog) -> None:
        """Combine the round and publish it with its log entry, in one transaction."""
        assert rnd.participants is not None
        contributions = self.records.contributions(rnd, [n for n, _ in rnd.participants])
        answers = self.records.answers(rnd)
        ys = [verify_contribution(e, max_size=len(e)).contribution.y for _, _, e in contributions]
        a_s = [verify_answer(e, max_size=len(e)).answer.a for _, _, e in answers]
        aggregate = combine(ys, a_s, catalog.federation_size)
        blob = np.asarray(aggregate, dtype="<i8").tobytes()
        document = round_document(rnd.catalog, rnd.window_start, rnd.window_end, rnd.participants,
                                  [(k, d) for k, d, _ in answers], blob)
        now = int(self.now())
        with self.log.transaction() as tx:
            tx.execute("UPDATE rounds SET state = 'published', aggregate = ?, published = ? WHERE catalog = ? "
                       "AND window_start = ? AND window_end = ? AND state = 'asked'", [blob, now, *rnd.key])
            self.log.append(tx, [{
                "kind": "round", "node": self.key.public.key_id, "window_start": rnd.window_start,
                "window_end": rnd.window_end, "catalog": rnd.catalog,
                "digest": hashlib.sha256(document).hexdigest(),
                "epsilon": {m.name: catalog.federation_epsilon(m) for m in catalog.federation_metrics},
                "accepted": now,
            }])
        self.metrics.rounds.labels("published").inc()
        log.info("round published", extra={"catalog": rnd.catalog, "window_start": rnd.window_start,
                                           "nodes": len(rnd.participants), "keepers": len(answers)})
        if self._on_publish is not None:
            self._on_publish()



def _problem(data: bytes) -> dict[str, Any]:
    try:
        body = json.loads(data[:65_536])
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _named_nodes(problem: Mapping[str, Any]) -> set[str]:
    """The node key ids a keeper's problem names (`node`, or `nodes`), if any."""
    nodes = problem.get("nodes")
    named: list[Any] = nodes if isinstance(nodes, list) else [problem.get("node")]
    return {n for n in named if isinstance(n, str)}
