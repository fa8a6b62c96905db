"""The transparency log: an append-only, hash-chained record of every accepted snapshot and round part.

Entry n carries its content (signer's key id, window, catalog, body digest,
epsilon per metric, time accepted; and, for anything but a snapshot, its `kind`:
`contribution`, `keeper-answer` or `round`, docs/protocol.md section 6) and
    entry_hash_n = SHA-256( bytes.fromhex(entry_hash_{n-1}) || canonical_json(content_n) )
with entry_hash_0 = 64 zeros, and the hub signs its head (`head_message`). A
chain only proves the log consistent with itself: a rewrite recomputes it.
What catches one is a pinned hub key and a head kept from an earlier look,
which the new log must extend (`liberation hub log verify URL --key --state`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from protocol.errors import LiberationError

GENESIS = "0" * 64
CONTENT_FIELDS = ("seq", "node", "window_start", "window_end", "catalog", "digest", "epsilon", "accepted")
HEAD_PREFIX = "liberation-log-head/v1"
"""Domain separation of the hub's signature over its log head."""


def head_message(seq: int, entry_hash: str) -> bytes:
    """The bytes the hub signs for the head at entry `seq` (0 for an empty log) with hash `entry_hash`."""
    return f"{HEAD_PREFIX}\n{seq}\n{entry_hash}".encode()


def canonical_json(content: Mapping[str, Any]) -> bytes:
    """Sorted keys, no spaces, UTF-8: the bytes the entry hash covers."""
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def entry_hash(prev_hash: str, content: Mapping[str, Any]) -> str:
    """The chained hash of one entry."""
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical_json(content)).hexdigest()


KINDS = ("snapshot", "contribution", "keeper-answer", "round")
"""What an entry records: a node's snapshot, a node's contribution to a round, a keeper's answer, a published round."""


def content_of(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The hashed part of a published entry: a snapshot's fields, plus `kind` for the other kinds."""
    content = {k: entry[k] for k in CONTENT_FIELDS}
    kind = entry.get("kind", "snapshot")
    if kind != "snapshot":
        content["kind"] = kind
    return content


class ChainError(LiberationError, ValueError):
    """The log does not chain: names the first entry at fault."""


def verify_chain(entries: Iterable[Mapping[str, Any]], *, start_hash: str = GENESIS, start_seq: int = 1) -> str:
    """Recompute every hash; return the head hash, or raise ChainError at the first bad entry."""
    prev, expected_seq = start_hash, start_seq
    for entry in entries:
        # Entries come from whoever serves the log: check their shape before reading them.
        if not isinstance(entry, Mapping) or any(k not in entry for k in (*CONTENT_FIELDS, "prev_hash", "entry_hash")):
            raise ChainError(f"entry {expected_seq}: not a log entry (a field is missing)")
        seq = entry["seq"]
        if type(seq) is not int or seq != expected_seq:
            raise ChainError(f"entry {expected_seq}: its sequence number is not {expected_seq}")
        if entry["prev_hash"] != prev:
            raise ChainError(f"entry {expected_seq}: prev_hash does not match the previous entry")
        try:
            computed = entry_hash(prev, content_of(entry))
        except (TypeError, ValueError):  # not JSON-serialisable, or a lone surrogate in a string
            raise ChainError(f"entry {expected_seq}: its content cannot be hashed") from None
        if computed != entry["entry_hash"]:
            raise ChainError(f"entry {expected_seq}: entry_hash does not match its content")
        prev, expected_seq = computed, expected_seq + 1
    return prev
