"""Audit a hub's transparency log from outside: its signed head, its chain, and what nodes say they sent.

A hash chain proves only that a log is consistent with itself: whoever can write the hub's
database can drop an entry, recompute every later hash and serve the result. So the audit
needs a hub key pinned beforehand (it refuses to run without one), and catches a rewrite by
remembering the last head it verified (`--state`): the log must then extend it, with the
same hash at the same entry, never shorter. Nodes (`--node`) add what the hub cannot forge:
every snapshot a node lists must be in the log exactly once, with the epsilon its ledger
recorded, and the log may name no snapshot of that node the node does not list.

Messages name roles (the hub, node #2), paths and key ids, never a host or an address.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import http.client
import json
import os
import re
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

import numpy as np

from federation.translog import GENESIS, ChainError, head_message, verify_chain
from protocol.codec import EnvelopeError
from protocol.errors import LiberationError
from protocol.files import fsync_directory, write_file_then
from protocol.keys import KeyFormatError, PublicKey
from protocol.rounds import combine, round_document, verify_answer, verify_contribution

PAGE_SIZE = 1000
"""Entries asked for per request (the hub answers at most 10,000)."""
TIMEOUT_SECONDS = 30.0
MAX_ANSWER_BYTES = 64 * 1024 * 1024
"""Larger answers are refused: a hub or node must not make the auditor hold unbounded memory."""
STATE_FORMAT = "liberation-log-state/v1"

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX128 = re.compile(r"[0-9a-f]{128}")
_KEY_ID = re.compile(r"[0-9a-f]{32}")


class LogAuditError(LiberationError):
    """The log, or what a node publishes, does not verify, or could not be read: one line, for a person."""


# ---- inputs -----------------------------------------------------------------------------------


def read_hub_key(arg: str) -> PublicKey:
    """The pinned hub key: base64 or PEM, or a file holding either (as `hub enroll --key` takes)."""
    try:
        is_file = Path(arg).is_file()
    except (OSError, ValueError):  # a name too long, a NUL: not a file name, so key text
        is_file = False
    try:
        text = Path(arg).read_text(encoding="utf-8") if is_file else arg
    except (OSError, UnicodeDecodeError) as exc:
        raise LogAuditError(f"cannot read the hub key file {arg}: {getattr(exc, 'strerror', None) or 'not text'}") from None
    try:
        return PublicKey.parse(text.strip())
    except KeyFormatError as exc:
        raise LogAuditError(f"--key is not the hub's Ed25519 public key (base64 or PEM, or a file of it): {exc}") from None


def _base(url: str, role: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise LogAuditError(f"{role}: give a URL such as https://hub.example.org")
    return url.rstrip("/")


# ---- HTTP ---------------------------------------------------------------------------------------


def _why(reason: object) -> str:
    """A network failure in words that carry no host or address (some library messages do)."""
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError):
        return f"no answer within {TIMEOUT_SECONDS:g} s"
    if isinstance(reason, socket.gaierror):
        return "the host name does not resolve"
    if isinstance(reason, ssl.SSLCertVerificationError):
        return "its TLS certificate does not verify"
    if isinstance(reason, ssl.SSLError):
        return "the TLS handshake failed"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return "the request failed"


class _WebRedirectsOnly(urllib.request.HTTPRedirectHandler):
    """Follow a redirect (http to https, a moved hub) only to another http(s) URL."""

    def redirect_request(
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str, headers: http.client.HTTPMessage, newurl: str
    ) -> urllib.request.Request | None:
        if urllib.parse.urlsplit(newurl).scheme not in ("http", "https"):
            return None  # urllib then raises the 3xx as an HTTPError
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_WebRedirectsOnly)


def _phrase(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "error"


def get_json(url: str, what: str) -> Any:
    """GET `url` and decode its JSON; any failure is a LogAuditError naming `what` (a role and a path)."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with _OPENER.open(request, timeout=TIMEOUT_SECONDS) as resp:
            body = resp.read(MAX_ANSWER_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise LogAuditError(f"{what}: HTTP {exc.code} {_phrase(exc.code)}") from None
    except urllib.error.URLError as exc:
        raise LogAuditError(f"{what}: {_why(exc.reason)}") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise LogAuditError(f"{what}: {_why(exc)}") from None
    if len(body) > MAX_ANSWER_BYTES:
        raise LogAuditError(f"{what}: the answer is over {MAX_ANSWER_BYTES // (1024 * 1024)} MiB")
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise LogAuditError(f"{what}: the answer is not JSON") from None


# ---- the hub's log ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Head:
    """A log head as the hub signed it: its last entry's number (0: empty) and hash."""

    seq: int
    entry_hash: str
    signature: str = ""


def _signed_head(page: Any, what: str) -> tuple[Head, str | None]:
    """The page's head and the key id the hub names, after checking their shape (not the signature)."""
    head = page.get("head") if isinstance(page, dict) else None
    if not isinstance(head, dict):
        raise LogAuditError(f"{what}: no signed head in the answer")
    seq, entry_hash, signature = head.get("seq"), head.get("entry_hash"), head.get("signature")
    if type(seq) is not int or seq < 0 or not isinstance(entry_hash, str) or not _HEX64.fullmatch(entry_hash):
        raise LogAuditError(f"{what}: the head's sequence number or hash is malformed")
    if not isinstance(signature, str) or not _HEX128.fullmatch(signature):
        raise LogAuditError(f"{what}: the head's signature is not 64 bytes of hex")
    named = page.get("hub")
    return Head(seq, entry_hash, signature), named if isinstance(named, str) and _KEY_ID.fullmatch(named) else None


def _entries(page: Any, what: str) -> list[dict[str, Any]]:
    entries = page.get("entries") if isinstance(page, dict) else None
    if not isinstance(entries, list):
        raise LogAuditError(f"{what}: no list of entries in the answer")
    return entries


@dataclass
class LogEntry:
    """What the node and round checks need of one verified entry."""

    seq: int
    node: Any
    window_start: Any
    epsilon: Any
    kind: str = "snapshot"
    window_end: Any = None
    catalog: Any = None


@dataclass
class VerifiedLog:
    """The outcome of walking a log: its signed head, the hash at the remembered entry, entries by digest."""

    head: Head
    hash_at: dict[int, str] = field(default_factory=dict)
    by_digest: dict[str, list[LogEntry]] = field(default_factory=dict)
    rounds: list[LogEntry] = field(default_factory=list)
    """The `round` entries: published federation rounds, with their digest in `by_digest`."""


def verify_log(base: str, key: PublicKey, *, remembered: Head | None, page_size: int, index: bool) -> VerifiedLog:
    """Fetch the log page by page and verify it, raising LogAuditError at the first fault.

    (1) the head of the first page is signed by the pinned key; (2) the entries, fetched up to
    that head, chain from genesis to its hash; (3) the log extends `remembered`: not shorter,
    and the same hash at its entry.
    """
    what = f"the hub (GET /v1/log?after=0&limit={page_size})"
    page = get_json(f"{base}/v1/log?after=0&limit={page_size}", what)
    head, named = _signed_head(page, what)
    # (1) the head is the pinned key's signature, over exactly the bytes the hub signs
    if not key.verify(bytes.fromhex(head.signature), head_message(head.seq, head.entry_hash)):
        other = f" (the hub names key {named})" if named is not None and named != key.key_id else ""
        raise LogAuditError(f"the log's head is not signed by the pinned hub key {key.key_id}{other}")
    # (3, early) a log shorter than one verified before was rewritten
    if remembered is not None and head.seq < remembered.seq:
        raise LogAuditError(
            f"the log shrank: its signed head is entry {head.seq}, but entry {remembered.seq} was verified before"
        )
    result = VerifiedLog(head)
    prev, done = GENESIS, 0
    while done < head.seq:
        if done:
            what = f"the hub (GET /v1/log?after={done}&limit={page_size})"
            page = get_json(f"{base}/v1/log?after={done}&limit={page_size}", what)
        batch = _entries(page, what)[: head.seq - done]  # entries past the signed head are not covered by it
        if not batch:
            raise LogAuditError(f"the log ends at entry {done}, before its signed head (entry {head.seq})")
        # (2) each entry chains to the one before
        try:
            prev = verify_chain(batch, start_hash=prev, start_seq=done + 1)
        except ChainError as exc:
            raise LogAuditError(f"the log does not chain: {exc}") from None
        for entry in batch:
            seq = entry["seq"]
            if remembered is not None and seq == remembered.seq:
                result.hash_at[seq] = entry["entry_hash"]
            kind = str(entry.get("kind", "snapshot"))
            if index or kind != "snapshot":
                logged = LogEntry(seq, entry["node"], entry["window_start"], entry["epsilon"], kind,
                                  entry["window_end"], entry["catalog"])
                result.by_digest.setdefault(str(entry["digest"]), []).append(logged)
                if kind == "round":
                    result.rounds.append(logged)
        done += len(batch)
    if prev != head.entry_hash:
        raise LogAuditError(f"the log's entries end at hash {prev[:16]}…, not at its signed head {head.entry_hash[:16]}…")
    # (3) the log extends the head verified before: the same hash at the same entry
    if remembered is not None and remembered.seq > 0 and result.hash_at.get(remembered.seq) != remembered.entry_hash:
        raise LogAuditError(
            f"the log was rewritten: entry {remembered.seq} has another hash than when it was verified before"
        )
    return result


# ---- the state: the last head verified, per hub key ---------------------------------------------


def load_state(path: Path) -> dict[str, Any]:
    """The state file's content, or an empty state if there is no file yet; anything unexpected is an error."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {"format": STATE_FORMAT, "hubs": {}}
    except (OSError, UnicodeDecodeError) as exc:
        raise LogAuditError(f"cannot read the state file {path}: {getattr(exc, 'strerror', None) or 'not text'}") from None
    try:
        state = json.loads(text)
    except ValueError:
        state = None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or not isinstance(state.get("hubs"), dict):
        # Never start afresh over it: that would forget the very head a rewrite must extend.
        raise LogAuditError(f"the state file {path} is not a log state written by liberation; move it away to start afresh")
    return state


def remembered_head(state: dict[str, Any], key: PublicKey, path: Path) -> Head | None:
    """The head last verified for this hub key, if any."""
    entry = state["hubs"].get(key.key_id)
    if entry is None:
        return None
    seq, entry_hash = (entry.get("seq"), entry.get("entry_hash")) if isinstance(entry, dict) else (None, None)
    if type(seq) is not int or seq < 0 or not isinstance(entry_hash, str) or not _HEX64.fullmatch(entry_hash):
        raise LogAuditError(f"the state file {path} holds a malformed head for hub key {key.key_id}")
    return Head(seq, entry_hash)


def save_state(path: Path, state: dict[str, Any], key: PublicKey, head: Head) -> None:
    """Record `head` for this hub key: the whole file replaced at once, mode 0600."""
    state["hubs"][key.key_id] = {
        "seq": head.seq, "entry_hash": head.entry_hash, "signature": head.signature,
        "verified": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    data = (json.dumps(state, indent=2, sort_keys=True) + "\n").encode()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Atomic: the old state or the new one, never half of either.
        write_file_then(path, data, 0o600, os.replace)
        fsync_directory(path.parent)
    except OSError as exc:
        raise LogAuditError(f"cannot write the state file {path}: {exc.strerror or exc}") from None


# ---- nodes: what they say they published -----------------------------------------------------


def _epoch(text: Any) -> int | None:
    if not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return int(when.timestamp()) if when.tzinfo is not None else None


def check_node(base: str, number: int, log: VerifiedLog) -> str:
    """Every snapshot node #`number` lists is in the log once, with its ledger's epsilon; and no other of its key."""
    role = f"node #{number}"
    what = f"{role} (GET /v1/snapshots)"
    listed = get_json(f"{base}/v1/snapshots", what)
    node = listed.get("node") if isinstance(listed, dict) else None
    snapshots = listed.get("snapshots") if isinstance(listed, dict) else None
    if not isinstance(node, str) or not _KEY_ID.fullmatch(node) or not isinstance(snapshots, list):
        raise LogAuditError(f"{what}: not a node's list of snapshots")
    what = f"{role} (GET /v1/ledger)"
    ledger = get_json(f"{base}/v1/ledger", what)
    rows = ledger.get("entries") if isinstance(ledger, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise LogAuditError(f"{what}: not a node's privacy ledger")
    spent: dict[str, dict[str, Any]] = {}
    for row in rows:
        spent.setdefault(str(row.get("digest")), {})[str(row.get("metric"))] = row.get("epsilon")
    mine: set[str] = set()
    for item in snapshots:
        digest = item.get("digest") if isinstance(item, dict) else None
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise LogAuditError(f"{role} (GET /v1/snapshots): a snapshot without a well-formed digest")
        mine.add(digest)
        window = _epoch(item.get("window_start"))
        if window is None:
            raise LogAuditError(f"{role} (GET /v1/snapshots): a snapshot with an unreadable window_start")
        name = f"node {node}: the snapshot of {datetime.fromtimestamp(window, UTC):%Y-%m-%d %H:%M}Z (digest {digest[:16]}…)"
        found = [e for e in log.by_digest.get(digest, []) if e.kind == "snapshot"]
        if not found:
            raise LogAuditError(f"{name} is not in the hub's log (if it was exported minutes ago, its push may be pending)")
        if len(found) > 1:
            raise LogAuditError(f"{name} is in the hub's log {len(found)} times (entries {', '.join(str(e.seq) for e in found)})")
        entry = found[0]
        if entry.node != node:
            raise LogAuditError(f"{name} is in the hub's log (entry {entry.seq}) under another node's key")
        if entry.window_start != window:
            raise LogAuditError(f"{name} is in the hub's log (entry {entry.seq}) with another window")
        recorded = spent.get(digest)
        if not recorded:
            raise LogAuditError(f"{name} has no entry in the node's own ledger")
        if entry.epsilon != recorded:
            raise LogAuditError(
                f"{name} is in the hub's log (entry {entry.seq}) with epsilon {_total(entry.epsilon)}, "
                f"but the node's ledger recorded {_total(recorded)}"
            )
    foreign = sorted(e.seq for d, es in log.by_digest.items() if d not in mine for e in es
                     if e.node == node and e.kind == "snapshot")
    if foreign:
        raise LogAuditError(
            f"node {node}: the hub's log names {len(foreign)} snapshot(s) of this node that it does not list "
            f"(entries {', '.join(map(str, foreign[:5]))}{', …' if len(foreign) > 5 else ''})"
        )
    return f"node {node}: {len(mine)} snapshot(s), each in the log once, with the epsilon its ledger recorded"


# ---- federation rounds: recomputed from their signed parts ---------------------------------------


def check_rounds(base: str, log: VerifiedLog) -> str:
    """Recompute every published round the log names; LogAuditError at the first that does not add up."""
    for entry in log.rounds:
        check_round(base, log, entry)
    return f"{len(log.rounds)} round(s) recomputed from their signed parts: each equals the aggregate the hub published"


def _logged(log: VerifiedLog, digest: str, kind: str, signer: str, entry: LogEntry) -> bool:
    return any(e.kind == kind and e.node == signer and e.window_start == entry.window_start
               and e.window_end == entry.window_end and e.catalog == entry.catalog for e in log.by_digest.get(digest, []))


class _Verified(Protocol):
    @property
    def digest(self) -> str: ...


V = TypeVar("V", bound=_Verified)


def _signed_part(
    name: str, log: VerifiedLog, entry: LogEntry, what: str, party: tuple[str, str], listed: tuple[str, bytes],
    verify: Callable[..., V], claims: Callable[[V], tuple[object, ...]], expected: tuple[object, ...],
) -> V:
    """(1) a round's part verifies, is the one listed and `claims` what is `expected` (its signer first);
    (2) it is in the log as that party's part of the round."""
    (role, who), (digest, envelope) = party, listed
    try:
        verified = verify(envelope, max_size=len(envelope))
    except EnvelopeError as exc:
        raise LogAuditError(f"{name}: the {what} of {role} {who} does not verify ({exc.reason})") from None
    if verified.digest != digest or claims(verified) != expected:
        raise LogAuditError(f"{name}: the {what} listed for {role} {who} is another one")
    if not _logged(log, digest, "contribution" if what == "contribution" else "keeper-answer", who, entry):
        raise LogAuditError(f"{name}: the {what} of {role} {who} is not in the log")
    return verified


def check_round(base: str, log: VerifiedLog, entry: LogEntry) -> None:
    """(1) the round's parts verify, (2) each is in the log, (3) the answers are for its set, (4) they add up."""
    name = f"the round of {_when(entry.window_start)} (log entry {entry.seq})"
    what = f"the hub (GET /v1/rounds/{entry.window_start}?catalog=…)"
    doc = get_json(f"{base}/v1/rounds/{entry.window_start}?catalog={entry.catalog}", what)
    if not isinstance(doc, dict) or doc.get("state") != "published":
        raise LogAuditError(f"{name}: the hub does not serve it as published")
    try:
        parts = [(p["node"], p["digest"], base64.b64decode(p["contribution"], validate=True)) for p in doc["participants"]]
        answers = [(a["keeper"], a["digest"], base64.b64decode(a["answer"], validate=True)) for a in doc["answers"]]
        aggregate = np.array(doc["aggregate"], dtype=np.int64)
    except (KeyError, TypeError, ValueError, OverflowError, binascii.Error):
        raise LogAuditError(f"{name}: the hub's document of it is malformed") from None
    if not parts or not answers or aggregate.ndim != 1 or not len(aggregate):
        raise LogAuditError(f"{name}: it has no participants, no answers or no aggregate")
    cells = len(aggregate)
    ys, set_ = [], []
    for node, digest, envelope in parts:
        c = _signed_part(
            name, log, entry, "contribution", ("node", node), (digest, envelope), verify_contribution,
            lambda v: (v.contribution.node, v.contribution.window_start, v.contribution.window_end, v.contribution.catalog),
            (node, entry.window_start, entry.window_end, entry.catalog),
        ).contribution
        ys.append(c.y)
        set_.append((node, digest))
    a_s, answered = [], []
    for keeper, digest, envelope in answers:
        answer = _signed_part(name, log, entry, "answer", ("keeper", keeper), (digest, envelope), verify_answer,
                              lambda v: (v.answer.keeper,), (keeper,)).answer
        # (3) for exactly this round's participant set
        if list(zip(answer.nodes, answer.digests, strict=False)) != set_ or (answer.window_start, answer.window_end) != (
                entry.window_start, entry.window_end):
            raise LogAuditError(f"{name}: keeper {keeper} answered for another participant set")
        a_s.append(answer.a)
        answered.append((keeper, digest))
    # (4) sum y_i + sum A_k (mod 2^64) is the published aggregate, and the log's digest covers it
    try:
        recomputed = combine(ys, a_s, cells)
    except EnvelopeError:
        raise LogAuditError(f"{name}: its parts are not all of the aggregate's length") from None
    if not np.array_equal(recomputed, aggregate):
        raise LogAuditError(f"{name}: its signed parts add up to another aggregate than the one published")
    digest = hashlib.sha256(round_document(entry.catalog, entry.window_start, entry.window_end, set_, answered,
                                           np.asarray(aggregate, dtype="<i8").tobytes())).hexdigest()
    if not any(e.kind == "round" and e.seq == entry.seq for e in log.by_digest.get(digest, [])):
        raise LogAuditError(f"{name}: the log's digest of it does not match its parts and aggregate")


def _when(window_start: Any) -> str:
    return datetime.fromtimestamp(window_start, UTC).strftime("%Y-%m-%d %H:%M") + "Z" if isinstance(window_start, int) else "?"


def _total(epsilon: Any) -> str:
    if isinstance(epsilon, dict) and all(isinstance(v, (int, float)) for v in epsilon.values()):
        return f"{sum(epsilon.values()):.6g} over {len(epsilon)} metrics"
    return "(malformed)"


# ---- the whole audit ------------------------------------------------------------------------------


def audit_hub_log(
    url: str, key_arg: str | None, *, state_path: Path | None = None, nodes: list[str] | None = None,
    page_size: int = PAGE_SIZE,
) -> list[str]:
    """Run the audit; return the lines to print, or raise LogAuditError (one line) at the first fault."""
    if not key_arg:
        raise LogAuditError(
            "a pinned hub key is required: --key BASE64|FILE (the hub's public key, from its operator, not "
            "from the hub's own answers); without it the log proves only that it agrees with itself"
        )
    if page_size < 1:
        raise LogAuditError("--page-size must be at least 1")
    key = read_hub_key(key_arg)
    base = _base(url, "the hub")
    node_bases = [_base(n, f"node #{i}") for i, n in enumerate(nodes or (), start=1)]
    state = load_state(state_path) if state_path is not None else None
    remembered = remembered_head(state, key, state_path) if state is not None and state_path is not None else None
    log = verify_log(base, key, remembered=remembered, page_size=page_size, index=bool(node_bases))
    lines = [
        f"the log verifies: {log.head.seq} entries, head {log.head.entry_hash}, signed by hub key {key.key_id}"
    ]
    if state is not None and state_path is not None:
        # Recorded before the node checks: this head is the hub's signed word, kept even if a node disagrees.
        save_state(state_path, state, key, log.head)
        if remembered is None:
            lines.append(f"first check of this hub key: its head is recorded in {state_path}")
        else:
            lines.append(f"it extends the head verified before (entry {remembered.seq}); recorded in {state_path}")
    else:
        lines.append("no --state: nothing remembered, so a rewrite of what was seen before cannot be noticed")
    for number, node_base in enumerate(node_bases, start=1):
        lines.append(check_node(node_base, number, log))
    if log.rounds:
        lines.append(check_rounds(base, log))
    return lines
