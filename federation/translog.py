"""The transparency log: an append-only, hash-chained record of every accepted snapshot.

Entry n carries its content (node key id, window, catalog, body digest,
epsilon per metric, time accepted) and
    entry_hash_n = SHA-256( bytes.fromhex(entry_hash_{n-1}) || canonical_json(content_n) )
with entry_hash_0 = 64 zeros. Anyone holding the log can recompute the chain
(`liberation hub log verify URL`): rewriting or dropping an old entry changes
every later hash, so what a community published, and the privacy budget it
spent, cannot be quietly edited after the fact.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

GENESIS = "0" * 64
CONTENT_FIELDS = ("seq", "node", "window_start", "window_end", "catalog", "digest", "epsilon", "accepted")


def canonical_json(content: Mapping[str, Any]) -> bytes:
    """Sorted keys, no spaces, UTF-8: the bytes the entry hash covers."""
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def entry_hash(prev_hash: str, content: Mapping[str, Any]) -> str:
    """The chained hash of one entry."""
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical_json(content)).hexdigest()


def content_of(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The hashed part of a published entry."""
    return {k: entry[k] for k in CONTENT_FIELDS}


class ChainError(ValueError):
    """The log does not chain: names the first entry at fault."""


def verify_chain(entries: Iterable[Mapping[str, Any]], *, start_hash: str = GENESIS, start_seq: int = 1) -> str:
    """Recompute every hash; return the head hash, or raise ChainError at the first bad entry."""
    prev, expected_seq = start_hash, start_seq
    for entry in entries:
        if entry.get("seq") != expected_seq:
            raise ChainError(f"entry {entry.get('seq')}: expected sequence number {expected_seq}")
        if entry.get("prev_hash") != prev:
            raise ChainError(f"entry {expected_seq}: prev_hash does not match the previous entry")
        if entry_hash(prev, content_of(entry)) != entry.get("entry_hash"):
            raise ChainError(f"entry {expected_seq}: entry_hash does not match its content")
        prev, expected_seq = str(entry["entry_hash"]), expected_seq + 1
    return prev
