"""The share keepers a node seals its round seeds to: pinned by key id in its settings, their keys learned from the hub.

A hub lists its enrolled keepers (GET /v1/keepers): each with its Ed25519 identity and the
X25519 sealing key that identity signed. The node takes only the keepers its operator pinned
by key id, and only a sealing key the pinned identity signed: a hub cannot slip in a keeper
of its own, nor a sealing key it holds. What it learned is kept in the store, so a node whose
hub is down at export still contributes.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp

from node.store import Store
from protocol.envelope import SignatureError
from protocol.keys import KeyFormatError, PublicKey
from protocol.rounds import KeeperKey

log = logging.getLogger("liberation.node.keepers")

MAX_LISTING_BYTES = 1024 * 1024


class KeeperDirectory:
    """The pinned keepers and the keys learned for them."""

    def __init__(self, store: Store, pinned: Sequence[str], *, now: Callable[[], float] = time.time) -> None:
        self.store = store
        self.pinned = tuple(sorted(set(pinned)))
        self._now = now
        self._known: dict[str, KeeperKey] = {}
        rows = store.cursor().execute("SELECT key_id, public_key, hpke_key, signature FROM keepers").fetchall()
        for key_id, public, hpke, signature in rows:
            if key_id in self.pinned:
                self._known[key_id] = KeeperKey(PublicKey.from_raw(bytes(public)), bytes(hpke), bytes(signature))

    @property
    def enabled(self) -> bool:
        """Whether this node contributes to rounds at all (its operator pinned keepers)."""
        return bool(self.pinned)

    def known(self) -> list[KeeperKey] | None:
        """Every pinned keeper's verified key, by key id; None while one of them is not learned yet."""
        if not self.pinned or any(k not in self._known for k in self.pinned):
            return None
        return [self._known[k] for k in self.pinned]

    def missing(self) -> list[str]:
        return [k for k in self.pinned if k not in self._known]

    def learn(self, listing: Any) -> list[str]:
        """Take the pinned keepers' keys from a hub's listing; the key ids learned or changed now.

        An entry is taken only if its identity hashes to a pinned key id and signed its sealing key.
        """
        entries = listing.get("keepers") if isinstance(listing, dict) else None
        if not isinstance(entries, list):
            return []
        learned = []
        for entry in entries:
            statement = _statement(entry)
            if statement is None or statement.key_id not in self.pinned:
                continue
            if self._known.get(statement.key_id) == statement:
                continue
            with self.store.transaction() as tx:
                tx.execute("DELETE FROM keepers WHERE key_id = ?", [statement.key_id])
                tx.execute("INSERT INTO keepers VALUES (?, ?, ?, ?, ?)",
                           [statement.key_id, statement.identity.raw, statement.hpke, statement.signature,
                            int(self._now())])
            self._known[statement.key_id] = statement
            learned.append(statement.key_id)
        return learned

    async def fetch(self, session: aiohttp.ClientSession, hub_url: str, timeout: float) -> list[str]:
        """Ask the hub for its keepers and learn the pinned ones; a failure is logged, never raised."""
        url = hub_url.rstrip("/") + "/v1/keepers"
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=False) as resp:
                if resp.status != 200:
                    log.warning("the hub did not list its keepers", extra={"status": resp.status})
                    return []
                body = await resp.content.read(MAX_LISTING_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("could not ask the hub for its keepers", extra={"reason": type(exc).__name__})
            return []
        if len(body) > MAX_LISTING_BYTES:
            return []
        try:
            listing = json.loads(body)
        except ValueError:
            return []
        learned = self.learn(listing)
        if learned:
            log.info("learned keepers' keys", extra={"keepers": learned})
        return learned


def _statement(entry: Any) -> KeeperKey | None:
    """A verified keeper statement from one listing entry, or None (logged) if it does not verify."""
    if not isinstance(entry, dict):
        return None
    try:
        identity = PublicKey.from_b64(str(entry.get("public_key", "")))
        hpke = base64.b64decode(str(entry.get("hpke_key", "")), validate=True)
        signature = base64.b64decode(str(entry.get("hpke_signature", "")), validate=True)
        return KeeperKey(identity, hpke, signature).verify()
    except (KeyFormatError, SignatureError, binascii.Error, ValueError):
        log.warning("a keeper's keys in the hub's listing do not verify; not used", extra={"keeper": entry.get("key_id")})
        return None
