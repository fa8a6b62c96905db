"""The key registry of a hub or a share keeper: enroll a public key under a name and a kind, revoke it, look it up.

A hub enrolls nodes, child hubs and share keepers; a share keeper enrolls the nodes whose
contributions it opens seeds for. Both keep the table `nodes` (key id, name, public key,
enrolled, revoked, kind) in their own database.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from protocol.errors import Conflict, Forbidden, NotFound, ProblemType, Unprocessable
from protocol.keys import KeyFormatError, PublicKey
from runtime.storage import Database

log = logging.getLogger("liberation.hub.registry")

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")

Kind = Literal["node", "hub", "keeper"]
KINDS: Final[tuple[Kind, ...]] = ("node", "hub", "keeper")
"""A node publishes its own snapshots (nodes = 1) and contributions; a hub, merged snapshots of its
nodes (hub of hubs); a share keeper, answers to federation rounds (docs/protocol.md section 13)."""
PUBLISHERS: Final[tuple[Kind, ...]] = ("node", "hub")
"""The kinds whose snapshots a hub takes."""


@dataclass(frozen=True)
class NodeRecord:
    """One enrolled node."""

    key_id: str
    name: str
    public_key: PublicKey
    enrolled: int
    revoked: int | None
    kind: Kind = "node"

    @property
    def active(self) -> bool:
        return self.revoked is None

    def to_dict(self) -> dict[str, object]:
        return {
            "key_id": self.key_id,
            "name": self.name,
            "public_key": self.public_key.b64,
            "enrolled": self.enrolled,
            "revoked": self.revoked,
            "active": self.active,
            "kind": self.kind,
        }


NODES_TABLE = """
    CREATE TABLE nodes (
        key_id VARCHAR PRIMARY KEY,
        name VARCHAR NOT NULL UNIQUE,
        public_key BLOB NOT NULL,
        enrolled BIGINT NOT NULL,
        revoked BIGINT,
        kind VARCHAR NOT NULL DEFAULT 'node'
    )
"""
"""The registry's table, created by the first migration of each store that holds one."""


class Registry:
    """Enrolled keys, cached in memory for intake (the store is the truth)."""

    def __init__(self, store: Database, *, now: Callable[[], float] = time.time) -> None:
        self._store = store
        self._now = now
        self._cache: dict[str, NodeRecord] = {r.key_id: r for r in self._load()}

    def _load(self) -> list[NodeRecord]:
        rows = self._store.cursor().execute(
            "SELECT key_id, name, public_key, enrolled, revoked, kind FROM nodes ORDER BY enrolled, name"
        ).fetchall()
        records = []
        for k, n, pk, e, r, kind in rows:
            try:
                public_key = PublicKey.from_raw(bytes(pk))
            except KeyFormatError:
                # Enrolled before small-order keys were refused: under such a key anyone can sign,
                # so it is left out (its snapshots get 403 unknown-key) rather than stop the hub.
                log.error("enrolled key refused: small-order or non-canonical", extra={"node": k, "node_name": n})
                continue
            records.append(NodeRecord(k, n, public_key, int(e), r, kind if kind in KINDS else "node"))
        return records

    def nodes(self) -> list[NodeRecord]:
        """Every enrolled node, revoked ones included."""
        return sorted(self._cache.values(), key=lambda r: (r.enrolled, r.name))

    def enroll(self, name: str, public_key: PublicKey, kind: Kind = "node") -> NodeRecord:
        """Enroll a key under a unique name as a node's or a child hub's; 409 if the key or the name is already there.

        The same key and name again with the other kind changes the key's kind: a child hub
        enrolled before kinds existed was taken for a node.
        """
        if not NAME_PATTERN.match(name):
            raise Unprocessable(
                "a node name is 1-64 letters, digits, space, dot, dash or underscore", slug=ProblemType.INVALID_NAME
            )
        if kind not in KINDS:
            raise Unprocessable("kind is node, hub or keeper", slug=ProblemType.INVALID_KIND)
        record = NodeRecord(public_key.key_id, name, public_key, int(self._now()), None, kind)
        existing = self._cache.get(record.key_id)
        if existing is not None and existing.name == name and existing.kind != kind:
            changed = NodeRecord(existing.key_id, name, existing.public_key, existing.enrolled, existing.revoked, kind)
            with self._store.transaction() as tx:
                tx.execute("UPDATE nodes SET kind = ? WHERE key_id = ?", [kind, record.key_id])
            self._cache[record.key_id] = changed
            return changed
        with self._store.transaction() as tx:
            if tx.execute("SELECT 1 FROM nodes WHERE key_id = ?", [record.key_id]).fetchall():
                raise Conflict("this key is already enrolled", slug=ProblemType.ALREADY_ENROLLED)
            if tx.execute("SELECT 1 FROM nodes WHERE name = ?", [name]).fetchall():
                raise Conflict("a node of that name is already enrolled", slug=ProblemType.NAME_TAKEN)
            tx.execute(
                "INSERT INTO nodes (key_id, name, public_key, enrolled, revoked, kind) VALUES (?, ?, ?, ?, NULL, ?)",
                [record.key_id, name, public_key.raw, record.enrolled, kind],
            )
        self._cache[record.key_id] = record
        return record

    def find(self, key_id_or_name: str) -> NodeRecord:
        """A node by key id or name (404 if none)."""
        record = self._cache.get(key_id_or_name)
        if record is None:
            record = next((r for r in self._cache.values() if r.name == key_id_or_name), None)
        if record is None:
            raise NotFound("no enrolled node has that key id or name", slug=ProblemType.UNKNOWN_NODE)
        return record

    def revoke(self, key_id_or_name: str) -> NodeRecord:
        """Revoke a node: its snapshots are refused from now on (what was merged stays)."""
        record = self.find(key_id_or_name)
        if not record.active:
            return record
        revoked = NodeRecord(record.key_id, record.name, record.public_key, record.enrolled, int(self._now()), record.kind)
        with self._store.transaction() as tx:
            tx.execute("UPDATE nodes SET revoked = ? WHERE key_id = ?", [revoked.revoked, record.key_id])
        self._cache[record.key_id] = revoked
        return revoked

    def require_active(self, public_key: PublicKey, kinds: tuple[Kind, ...] = PUBLISHERS) -> NodeRecord:
        """Intake's key policy: (3) the key is enrolled as one of `kinds` and not revoked, else 403; its record."""
        record = self._cache.get(public_key.key_id)
        if record is None or record.public_key.raw != public_key.raw or record.kind not in kinds:
            raise Forbidden("this key is not enrolled here", slug=ProblemType.UNKNOWN_KEY)
        if not record.active:
            raise Forbidden("this key has been revoked", slug=ProblemType.REVOKED_KEY)
        return record
