"""Share keepers at the hub: enrolled like nodes (kind `keeper`), with the URL they answer on and their sealing key.

Enrolling a keeper takes its Ed25519 key (from its operator) and its URL; the hub fetches the
keeper's statement there (GET /v1/keeper) and keeps its X25519 sealing key only if that
identity signed it. Nodes learn the active keepers from GET /v1/keepers and check the
signature themselves (node/keepers.py): the hub is a messenger here, never trusted.
"""

from __future__ import annotations

import base64
import binascii
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from federation.store import HubStore
from protocol.envelope import SignatureError
from protocol.errors import BadRequest, NotFound, ProblemType, Unprocessable
from protocol.keys import KeyFormatError, PublicKey
from protocol.rounds import KeeperKey
from runtime.registry import NodeRecord, Registry

MAX_STATEMENT_BYTES = 64 * 1024


@dataclass(frozen=True)
class KeeperEndpoint:
    """An active keeper: its record, the URL it answers on, its verified sealing key."""

    record: NodeRecord
    url: str
    statement: KeeperKey

    @property
    def key_id(self) -> str:
        return self.record.key_id


def parse_statement(data: object) -> KeeperKey:
    """A keeper's statement (`GET /v1/keeper`), verified: its sealing key signed by its identity; else 422."""
    try:
        if not isinstance(data, dict):
            raise ValueError("not an object")
        statement = KeeperKey(
            PublicKey.from_b64(str(data.get("public_key", ""))),
            base64.b64decode(str(data.get("hpke_key", "")), validate=True),
            base64.b64decode(str(data.get("hpke_signature", "")), validate=True),
        )
        return statement.verify()
    except (KeyFormatError, SignatureError, binascii.Error, ValueError):
        raise Unprocessable(
            "the keeper's statement does not verify: its sealing key is not signed by its identity key",
            slug=ProblemType.INVALID_KEEPER,
        ) from None


def fetch_statement(url: str, timeout: float = 10.0) -> KeeperKey:
    """GET {url}/v1/keeper and verify it; 422 keeper-unreachable if it cannot be read."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BadRequest("a keeper's url is http(s)://host:port", slug=ProblemType.INVALID_ENROLLMENT)
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/v1/keeper", timeout=timeout) as resp:  # noqa: S310 - operator's URL
            body = resp.read(MAX_STATEMENT_BYTES + 1)
        data = json.loads(body)
    except (urllib.error.URLError, OSError, ValueError):
        raise Unprocessable("the keeper's statement could not be read at that url (GET /v1/keeper)",
                            slug=ProblemType.KEEPER_UNREACHABLE) from None
    return parse_statement(data)


class Keepers:
    """The hub's keepers: identity in the registry, endpoint and sealing key in `keepers`."""

    def __init__(self, store: HubStore, registry: Registry) -> None:
        self.store = store
        self.registry = registry
        # Endpoints change only through `enroll`: kept in memory (every contribution's check reads them).
        self._endpoints: dict[str, tuple[str, bytes, bytes]] = {
            str(k): (str(u), bytes(h), bytes(s))
            for k, u, h, s in store.cursor().execute("SELECT key_id, url, hpke_key, hpke_signature FROM keepers").fetchall()
        }

    def enroll(self, name: str, public_key: PublicKey, url: str, statement: KeeperKey) -> NodeRecord:
        """Enroll a keeper (409 if its key or name is taken by another) with the statement fetched from it."""
        if statement.identity != public_key:
            raise Unprocessable("the keeper at that url has another key than the one given", slug=ProblemType.INVALID_KEEPER)
        record = self.registry.enroll(name, public_key, "keeper")
        with self.store.transaction() as tx:
            tx.execute("DELETE FROM keepers WHERE key_id = ?", [record.key_id])
            tx.execute("INSERT INTO keepers VALUES (?, ?, ?, ?)",
                       [record.key_id, url.rstrip("/"), statement.hpke, statement.signature])
        self._endpoints[record.key_id] = (url.rstrip("/"), statement.hpke, statement.signature)
        return record

    def active(self) -> list[KeeperEndpoint]:
        """Every enrolled, unrevoked keeper, by key id."""
        out = []
        for key_id, (url, hpke, signature) in sorted(self._endpoints.items()):
            try:
                record = self.registry.find(key_id)
            except NotFound:
                continue
            if record.kind == "keeper" and record.active:
                out.append(KeeperEndpoint(record, url, KeeperKey(record.public_key, hpke, signature)))
        return out

    def get(self, key_id: str) -> KeeperEndpoint | None:
        return next((k for k in self.active() if k.key_id == key_id), None)

    def listing(self) -> dict[str, object]:
        """`GET /v1/keepers`: what nodes seal to (each entry verifiable without trusting the hub)."""
        return {
            "keepers": [
                {"key_id": k.key_id, "name": k.record.name, "public_key": k.statement.identity.b64,
                 "hpke_key": base64.b64encode(k.statement.hpke).decode(),
                 "hpke_signature": base64.b64encode(k.statement.signature).decode()}
                for k in self.active()
            ]
        }
