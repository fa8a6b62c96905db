"""The hub's stored rounds, read: each round's row and signed parts, its public document, published aggregates.

Reads only: federation/rounds.py moves rounds through their states (and writes them).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from federation.store import HubStore
from protocol.catalog import Catalog
from protocol.rounds import round_document


@dataclass(frozen=True)
class Round:
    """A round as stored."""

    catalog: str
    window_start: int
    window_end: int
    state: str
    opened: int
    deadline: int
    keepers: tuple[str, ...]
    participants: tuple[tuple[str, str], ...] | None
    """(node key id, contribution digest), ascending; fixed when the round closes (it shrinks only while closed)."""
    published: int | None
    note: str | None

    @property
    def key(self) -> list[object]:
        return [self.catalog, self.window_start, self.window_end]


@dataclass(frozen=True)
class PublishedRound:
    """A published round's aggregate, as views read it."""

    window_start: int
    window_end: int
    aggregate: npt.NDArray[np.int64]
    nodes: int
    keepers: int


class PublishedRounds:
    """The published rounds' aggregates, as the views read them (views/ranges.py `RoundRanges`)."""

    def __init__(self, store: HubStore) -> None:
        self.store = store

    def published(self, catalog: Catalog, start: int, end: int) -> dict[int, PublishedRound]:
        """The published rounds of a catalog whose windows start in [start, end)."""
        rows = self.store.cursor().execute(
            "SELECT window_start, window_end, aggregate, participants, keepers FROM rounds "
            "WHERE catalog = ? AND state = 'published' AND window_start >= ? AND window_start < ? ORDER BY window_start",
            [catalog.hash, start, end],
        ).fetchall()
        return {
            int(w): PublishedRound(int(w), int(e), np.frombuffer(bytes(a), dtype="<i8").astype(np.int64),
                                   len(json.loads(p)), len(json.loads(k)))
            for w, e, a, p, k in rows
        }


class RoundRecords:
    """Every stored round, and the contributions and keeper answers it holds."""

    def __init__(self, store: HubStore) -> None:
        self.store = store

    def rounds(self, states: Sequence[str] | None = None) -> list[Round]:
        rows = self.store.cursor().execute(
            "SELECT catalog, window_start, window_end, state, opened, deadline, keepers, participants, published, note "
            "FROM rounds ORDER BY window_start, catalog"
        ).fetchall()
        out = [_round(r) for r in rows]
        return [r for r in out if states is None or r.state in states]

    def get(self, catalog: str, window_start: int) -> Round | None:
        return next((r for r in self.rounds() if r.catalog == catalog and r.window_start == window_start), None)

    def contributions(self, rnd: Round, nodes: Sequence[str] | None = None) -> list[tuple[str, str, bytes]]:
        """(node, digest, envelope) of a round's contributions, ascending by node; only `nodes` if given."""
        rows = self.store.cursor().execute(
            "SELECT key_id, digest, envelope FROM round_contributions WHERE catalog = ? AND window_start = ? "
            "AND window_end = ? ORDER BY key_id", rnd.key,
        ).fetchall()
        wanted = set(nodes) if nodes is not None else None
        return [(str(k), str(d), bytes(e)) for k, d, e in rows if wanted is None or k in wanted]

    def answers(self, rnd: Round) -> list[tuple[str, str, bytes]]:
        """(keeper, digest, envelope) of the answers a round has, ascending by keeper."""
        rows = self.store.cursor().execute(
            "SELECT keeper, digest, envelope FROM round_answers WHERE catalog = ? AND window_start = ? "
            "AND window_end = ? ORDER BY keeper", rnd.key,
        ).fetchall()
        return [(str(k), str(d), bytes(e)) for k, d, e in rows]

    def document(self, rnd: Round) -> dict[str, Any]:
        """`GET /v1/rounds/{window}`: the round with every signed part, base64, so anyone can recompute it."""
        body: dict[str, Any] = {
            "catalog": rnd.catalog, "window_start": rnd.window_start, "window_end": rnd.window_end,
            "state": rnd.state, "opened": rnd.opened, "deadline": rnd.deadline, "keepers": list(rnd.keepers),
            "published": rnd.published, "note": rnd.note,
        }
        if rnd.participants is not None:
            nodes = [n for n, _ in rnd.participants]
            body["participants"] = [
                {"node": n, "digest": d, "contribution": base64.b64encode(e).decode()}
                for n, d, e in self.contributions(rnd, nodes)
            ]
        body["answers"] = [{"keeper": k, "digest": d, "answer": base64.b64encode(e).decode()} for k, d, e in self.answers(rnd)]
        if rnd.state == "published":
            row = self.store.cursor().execute(
                "SELECT aggregate FROM rounds WHERE catalog = ? AND window_start = ? AND window_end = ?", rnd.key
            ).fetchall()
            aggregate = bytes(row[0][0])
            body["aggregate"] = np.frombuffer(aggregate, dtype="<i8").tolist()
            answers = [(k, d) for k, d, _ in self.answers(rnd)]
            document = round_document(rnd.catalog, rnd.window_start, rnd.window_end, rnd.participants or (), answers,
                                      aggregate)
            body["digest"] = hashlib.sha256(document).hexdigest()
        return body


def _round(row: Sequence[Any]) -> Round:
    catalog, start, end, state, opened, deadline, keepers, participants, published, note = row
    return Round(
        str(catalog), int(start), int(end), str(state), int(opened), int(deadline), tuple(json.loads(keepers)),
        tuple((str(n), str(d)) for n, d in json.loads(participants)) if participants is not None else None,
        int(published) if published is not None else None, note,
    )
