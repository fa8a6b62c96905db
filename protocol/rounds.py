"""Federation rounds' contract: round ids, masks, sealed seeds, contributions, keeper answers, the combination.

    LiberationError
    └── EnvelopeError (protocol.codec)    received bytes refused; `reason` is a short code
        ├── DecodeError                  size, msgpack, canonical form, shape, `wrong-length`
        └── SignatureError               bad signature, key mismatch, unusable key
    SealError (LiberationError)          a sealed seed that does not open for this keeper and round

For round w of a catalog, node i holds its bounded true vector x_i over the federation
metrics' full public domains (catalog order, each metric row-major), draws a 32-byte seed
s_ik per share keeper k from the OS CSPRNG and publishes the signed contribution

    y_i = x_i + sum_k mask(s_ik)  (mod 2^64)      with  HPKE_seal(pk_k, s_ik, info = round id || node id || keeper id)

Keeper k opens its seeds of the participant set P the hub fixed and answers, signed, once:

    A_k = -sum_{i in P} mask(s_ik) + Z_k  (mod 2^64),  Z_k discrete Laplace at the catalog's federation scale

so sum_i y_i + sum_k A_k = sum_i x_i + sum_k Z_k, read as signed 64-bit integers. Byte for byte
in docs/protocol.md section 13. Pure: no I/O, no clock, no server code.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from protocol.catalog import Catalog
from protocol.codec import DecodeError, EnvelopeError, decode_canonical, encode_canonical
from protocol.envelope import ENVELOPE_VERSION, Envelope, SignatureError
from protocol.errors import LiberationError
from protocol.keys import PublicKey, SigningKey

CONTRIBUTION_FORMAT: Final = "liberation-contribution/1"
ANSWER_FORMAT: Final = "liberation-keeper-answer/1"
REQUEST_FORMAT: Final = "liberation-round-request/1"
ROUND_FORMAT: Final = "liberation-round/1"
CONTRIBUTION_PREFIX: Final = b"liberation-analytics/contribution/v1\x00"
"""Signed before a contribution's body: a contribution signature means nothing as a snapshot's, or the reverse."""
ANSWER_PREFIX: Final = b"liberation-analytics/keeper-answer/v1\x00"
"""Signed before a keeper answer's body."""
REQUEST_PREFIX: Final = b"liberation-analytics/round-request/v1\x00"
"""Signed by a hub before a round request's body: a keeper answers only the hubs it pinned."""
HPKE_KEY_PREFIX: Final = b"liberation-analytics/keeper-hpke-key/v1\x00"
"""Signed by a keeper's Ed25519 key before its X25519 public key: binds the sealing key to the enrolled identity."""
MASK_PREFIX: Final = b"liberation-analytics/round-mask/v1\x00"
"""Hashed before a seed: SHAKE-256(MASK_PREFIX || seed), read as little-endian uint64, is the seed's mask."""

SEED_SIZE: Final = 32
HPKE_KEY_SIZE: Final = 32
SEALED_SIZE: Final = 32 + SEED_SIZE + 16
"""enc (the ephemeral X25519 key) || ChaCha20-Poly1305 ciphertext of the seed || tag."""
ROUND_ID_SIZE: Final = 48
MAX_KEEPERS: Final = 16
MAX_PARTICIPANTS: Final = 1_000_000
MAX_REQUEST_SIZE: Final = 1 << 30
INT64_MAX: Final = 2**63 - 1

_SUITE: Final = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.CHACHA20_POLY1305)
_FIELD_PRIME: Final = 2**255 - 19
_SMALL_ORDER_U: Final = frozenset(
    {
        0,  # order 4 (and the identity's u under the Montgomery ladder)
        1,  # order 1
        _FIELD_PRIME - 1,  # order 2
        # order 8 (libsodium's blocklist)
        int.from_bytes(bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"), "little"),
        int.from_bytes(bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"), "little"),
    }
)
"""u-coordinates of X25519 points of small order: sealing to one gives a shared secret anyone knows."""

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]


class SealError(LiberationError):
    """A sealed seed that does not open with this keeper's key for this round and node."""


# ---------------------------------------------------------------------------
# identifiers and masks


def round_id(catalog_hash: str, window_start: int, window_end: int) -> bytes:
    """48 bytes: the catalog hash (32) || window start (8, big-endian) || window end (8, big-endian)."""
    if not (0 <= window_start < window_end <= INT64_MAX):
        raise ValueError("a round's window is [start, end) with 0 <= start < end < 2**63")
    return bytes.fromhex(catalog_hash) + window_start.to_bytes(8, "big") + window_end.to_bytes(8, "big")


def seal_info(round_bytes: bytes, node_key_id: str, keeper_key_id: str) -> bytes:
    """HPKE `info` of a sealed seed: round id (48) || node key id (16) || keeper key id (16) = 80 bytes."""
    return round_bytes + bytes.fromhex(node_key_id) + bytes.fromhex(keeper_key_id)


def mask(seed: bytes, cells: int) -> U64:
    """The mask of one seed: `cells` uint64s, SHAKE-256(MASK_PREFIX || seed) read little-endian."""
    if len(seed) != SEED_SIZE:
        raise ValueError("a seed is 32 bytes")
    return np.frombuffer(hashlib.shake_256(MASK_PREFIX + seed).digest(8 * cells), dtype="<u8").astype(np.uint64)


def to_u64(values: Sequence[int] | npt.NDArray[Any]) -> U64:
    """Signed 64-bit integers as their two's-complement uint64s (the vector arithmetic is mod 2^64)."""
    return np.asarray(values, dtype=np.int64).view(np.uint64)


def vector_bytes(vector: U64) -> bytes:
    """A vector's wire form: each uint64 little-endian, in order."""
    return np.asarray(vector, dtype="<u8").tobytes()


def vector_of(data: bytes, cells: int) -> U64:
    """The vector a wire form holds; DecodeError `wrong-length` unless it is exactly `cells` uint64s."""
    if len(data) != 8 * cells:
        raise DecodeError("wrong-length", f"a vector of this catalog's rounds is {8 * cells} bytes, not {len(data)}")
    return np.frombuffer(data, dtype="<u8").astype(np.uint64)


def federation_vector(catalog: Catalog, tables: Mapping[str, Sequence[int]]) -> list[int]:
    """The bounded true vector x of a round: the federation metrics' full tables, concatenated in catalog order."""
    out: list[int] = []
    for metric in catalog.federation_metrics:
        counts = tables[metric.name]
        if len(counts) != catalog.domain_size(metric):
            raise ValueError(f"metric {metric.name!r}: table does not cover its domain")
        out.extend(counts)
    return out


# ---------------------------------------------------------------------------
# keeper keys and sealed seeds


def check_hpke_key(raw: bytes) -> X25519PublicKey:
    """An X25519 public key fit to seal to: 32 bytes, canonical (u < p), not of small order; else KeyFormatError."""
    from protocol.keys import KeyFormatError

    if type(raw) is not bytes or len(raw) != HPKE_KEY_SIZE:
        raise KeyFormatError("an X25519 public key is 32 raw bytes")
    u = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    if raw[31] & 0x80 or u >= _FIELD_PRIME:
        raise KeyFormatError("not a canonical X25519 public key encoding")
    if u in _SMALL_ORDER_U:
        raise KeyFormatError("a small-order X25519 point is not a usable sealing key")
    return X25519PublicKey.from_public_bytes(raw)


@dataclass(frozen=True)
class KeeperKey:
    """A share keeper as a node seals to it: its Ed25519 identity and the X25519 key that identity signed."""

    identity: PublicKey
    hpke: bytes
    signature: bytes

    @property
    def key_id(self) -> str:
        return self.identity.key_id

    @classmethod
    def issue(cls, identity: SigningKey, hpke_public: bytes) -> KeeperKey:
        """The statement a keeper publishes: its HPKE key signed by its identity."""
        check_hpke_key(hpke_public)
        return cls(identity.public, hpke_public, identity.sign(HPKE_KEY_PREFIX + hpke_public))

    def verify(self) -> KeeperKey:
        """Itself if the HPKE key is usable and signed by the identity; KeyFormatError or SignatureError otherwise."""
        check_hpke_key(self.hpke)
        if not self.identity.verify(self.signature, HPKE_KEY_PREFIX + self.hpke):
            raise SignatureError("bad-signature", "the keeper's HPKE key is not signed by its identity key")
        return self


def seal_seed(seed: bytes, keeper: KeeperKey, info: bytes) -> bytes:
    """HPKE base mode (X25519, HKDF-SHA256, ChaCha20-Poly1305), empty aad: enc (32) || ct (48)."""
    sealed = _SUITE.encrypt(seed, check_hpke_key(keeper.hpke), info)
    assert len(sealed) == SEALED_SIZE
    return sealed


def open_seed(sealed: bytes, private: X25519PrivateKey, info: bytes) -> bytes:
    """The seed a keeper's private key opens for `info`; SealError if it does not open or is not 32 bytes."""
    if len(sealed) != SEALED_SIZE:
        raise SealError("a sealed seed is 80 bytes")
    try:
        check_hpke_key(sealed[:32])
        seed = _SUITE.decrypt(sealed, private, info)
    except (InvalidTag, ValueError):
        raise SealError("the sealed seed does not open with this keeper's key for this round and node") from None
    if len(seed) != SEED_SIZE:
        raise SealError("the sealed seed does not hold 32 bytes")
    return seed


# ---------------------------------------------------------------------------
# signed messages: the envelope layout of snapshots, another signing prefix


def _sign(body: bytes, key: SigningKey, prefix: bytes) -> bytes:
    return encode_canonical({"body": body, "pk": key.public.raw, "sig": key.sign(prefix + body), "v": ENVELOPE_VERSION})


def _open_signed(data: bytes, prefix: bytes, max_size: int, check_key: Callable[[PublicKey], None] | None) -> Envelope:
    """(1)-(3) layout and usable key, (4) the caller's key policy, (5) the signature over prefix + body as received."""
    envelope = Envelope.from_bytes(data, max_size=max_size)
    if check_key is not None:
        check_key(envelope.public_key)
    if not envelope.public_key.verify(envelope.signature, prefix + envelope.body):
        raise SignatureError("bad-signature", "signature does not verify")
    return envelope


def _decode_map(data: bytes, max_size: int, what: str) -> dict[str, Any]:
    try:
        obj = decode_canonical(data, max_size, max_str_len=1024, max_map_len=64)
    except DecodeError as exc:
        raise DecodeError(exc.reason, exc.detail, in_body=True) from None
    if type(obj) is not dict:
        raise DecodeError("shape", f"a {what} body is a map", in_body=True)
    return obj


def _shape(ok: bool, detail: str) -> None:
    if not ok:
        raise DecodeError("shape", detail, in_body=True)


def _key_id(value: object) -> bool:
    return type(value) is str and len(value) == 32 and all(c in "0123456789abcdef" for c in value)


def _digest(value: object) -> bool:
    return type(value) is str and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _int(value: object) -> bool:
    return type(value) is int and 0 <= value <= INT64_MAX


def _window(body: Mapping[str, Any]) -> None:
    _shape(_digest(body.get("catalog")), "catalog is 64 lowercase hex characters")
    start, end = body.get("window_start"), body.get("window_end")
    _shape(_int(start) and _int(end) and start < end, "window_start < window_end, both in [0, 2**63)")  # type: ignore[operator]


# ---------------------------------------------------------------------------
# contributions


@dataclass(frozen=True)
class SealedSeed:
    """One keeper's seed of a contribution, sealed to it."""

    keeper: str
    sealed: bytes


@dataclass(frozen=True)
class Contribution:
    """A node's masked vector for one round, with a sealed seed per keeper (sorted by keeper key id)."""

    node: str
    catalog: str
    window_start: int
    window_end: int
    created: int
    y: bytes
    seeds: tuple[SealedSeed, ...]

    @property
    def round(self) -> bytes:
        return round_id(self.catalog, self.window_start, self.window_end)

    @property
    def keepers(self) -> tuple[str, ...]:
        return tuple(s.keeper for s in self.seeds)

    def sealed_for(self, keeper: str) -> bytes | None:
        return next((s.sealed for s in self.seeds if s.keeper == keeper), None)

    def to_bytes(self) -> bytes:
        """The canonical msgpack body (docs/protocol.md 13.4)."""
        return encode_canonical({
            "catalog": self.catalog,
            "created": self.created,
            "format": CONTRIBUTION_FORMAT,
            "node": self.node,
            "seeds": [{"keeper": s.keeper, "sealed": s.sealed} for s in self.seeds],
            "window_end": self.window_end,
            "window_start": self.window_start,
            "y": self.y,
        })

    @classmethod
    def from_bytes(cls, data: bytes, *, max_size: int) -> Contribution:
        """Decode a canonical body strictly; DecodeError (reason `shape`) for a wrong field."""
        body = _decode_map(data, max_size, "contribution")
        _shape(set(body) == {"catalog", "created", "format", "node", "seeds", "window_end", "window_start", "y"},
               "a contribution body has exactly the fields of docs/protocol.md 13.4")
        _shape(body["format"] == CONTRIBUTION_FORMAT, f"format is {CONTRIBUTION_FORMAT}")
        _shape(_key_id(body["node"]), "node is a key id (32 lowercase hex characters)")
        _window(body)
        _shape(_int(body["created"]), "created is an integer in [0, 2**63)")
        _shape(type(body["y"]) is bytes and len(body["y"]) % 8 == 0 and len(body["y"]) > 0, "y is a non-empty bin of uint64s")
        seeds = body["seeds"]
        _shape(type(seeds) is tuple and 0 < len(seeds) <= MAX_KEEPERS, f"seeds is an array of 1 to {MAX_KEEPERS} maps")
        parsed = []
        for seed in seeds:
            _shape(type(seed) is dict and set(seed) == {"keeper", "sealed"}, "a seed is a map of keeper and sealed")
            _shape(_key_id(seed["keeper"]), "a seed's keeper is a key id")
            _shape(type(seed["sealed"]) is bytes and len(seed["sealed"]) == SEALED_SIZE, "a sealed seed is 80 bytes")
            parsed.append(SealedSeed(seed["keeper"], seed["sealed"]))
        ids = [s.keeper for s in parsed]
        _shape(ids == sorted(set(ids)), "seeds are sorted by keeper key id, one per keeper")
        return cls(body["node"], body["catalog"], body["window_start"], body["window_end"], body["created"],
                   body["y"], tuple(parsed))


@dataclass(frozen=True)
class VerifiedContribution:
    """A contribution whose signature verified and whose body names the key that signed it."""

    public_key: PublicKey
    body: bytes
    contribution: Contribution
    envelope: bytes
    digest: str
    """Lowercase hex SHA-256 of the body."""


def build_contribution(
    catalog: Catalog,
    x: Sequence[int],
    *,
    key: SigningKey,
    keepers: Sequence[KeeperKey],
    window_start: int,
    window_end: int,
    created: int,
    seed_source: Callable[[int], bytes] = secrets.token_bytes,
) -> bytes:
    """The signed envelope of a node's contribution: y = x + sum of one fresh seed's mask per keeper (mod 2^64).

    Seeds come from the OS CSPRNG and exist only inside this call: sealed to their keeper,
    then dropped (nothing kept could unmask y).
    """
    cells = catalog.federation_size
    if len(x) != cells or not cells:
        raise ValueError(f"a contribution of this catalog holds {cells} cells, not {len(x)}")
    if not keepers or len({k.key_id for k in keepers}) != len(keepers) or len(keepers) > MAX_KEEPERS:
        raise ValueError(f"a contribution is sealed to 1 to {MAX_KEEPERS} distinct keepers")
    rid = round_id(catalog.hash, window_start, window_end)
    y = to_u64(x).copy()
    seeds = []
    for keeper in sorted(keepers, key=lambda k: k.key_id):
        seed = seed_source(SEED_SIZE)
        y += mask(seed, cells)
        seeds.append(SealedSeed(keeper.key_id, seal_seed(seed, keeper, seal_info(rid, key.public.key_id, keeper.key_id))))
        del seed
    body = Contribution(key.public.key_id, catalog.hash, window_start, window_end, created, vector_bytes(y), tuple(seeds))
    return _sign(body.to_bytes(), key, CONTRIBUTION_PREFIX)


def verify_contribution(
    data: bytes, *, max_size: int, check_key: Callable[[PublicKey], None] | None = None
) -> VerifiedContribution:
    """Verify and decode a contribution envelope; EnvelopeError only (or what `check_key` raises).

    (1) size, (2) the envelope layout, (3) a usable key, (4) `check_key` (enrolled?), (5) the
    signature over CONTRIBUTION_PREFIX + body as received, (6) the body decode, (7) the body names the signer.
    """
    envelope = _open_signed(data, CONTRIBUTION_PREFIX, max_size, check_key)
    contribution = Contribution.from_bytes(envelope.body, max_size=max_size)
    if contribution.node != envelope.public_key.key_id:
        raise SignatureError("key-mismatch", "body names a different node than the signing key")
    return VerifiedContribution(envelope.public_key, envelope.body, contribution, envelope.data,
                                hashlib.sha256(envelope.body).hexdigest())


# ---------------------------------------------------------------------------
# keeper answers


@dataclass(frozen=True)
class Answer:
    """A keeper's answer for one round and participant set: minus the masks it opened, plus its noise."""

    keeper: str
    catalog: str
    window_start: int
    window_end: int
    created: int
    nodes: tuple[str, ...]
    """Participants' key ids, ascending."""
    digests: tuple[str, ...]
    """Each participant's contribution body digest, in the order of `nodes`."""
    noise: dict[str, float]
    """Metric name -> the discrete Laplace scale the keeper's noise has on each of its cells."""
    a: bytes

    @property
    def round(self) -> bytes:
        return round_id(self.catalog, self.window_start, self.window_end)

    def to_bytes(self) -> bytes:
        """The canonical msgpack body (docs/protocol.md 13.6)."""
        return encode_canonical({
            "a": self.a,
            "catalog": self.catalog,
            "created": self.created,
            "digests": list(self.digests),
            "format": ANSWER_FORMAT,
            "keeper": self.keeper,
            "noise": dict(self.noise),
            "nodes": list(self.nodes),
            "window_end": self.window_end,
            "window_start": self.window_start,
        })

    @classmethod
    def from_bytes(cls, data: bytes, *, max_size: int) -> Answer:
        body = _decode_map(data, max_size, "keeper answer")
        _shape(set(body) == {"a", "catalog", "created", "digests", "format", "keeper", "noise", "nodes",
                             "window_end", "window_start"}, "an answer body has exactly the fields of docs/protocol.md 13.6")
        _shape(body["format"] == ANSWER_FORMAT, f"format is {ANSWER_FORMAT}")
        _shape(_key_id(body["keeper"]), "keeper is a key id")
        _window(body)
        _shape(_int(body["created"]), "created is an integer in [0, 2**63)")
        _shape(type(body["a"]) is bytes and len(body["a"]) % 8 == 0 and len(body["a"]) > 0, "a is a non-empty bin of uint64s")
        nodes, digests = body["nodes"], body["digests"]
        _shape(type(nodes) is tuple and type(digests) is tuple and len(nodes) == len(digests) > 0,
               "nodes and digests are arrays of the same, non-zero length")
        _shape(all(map(_key_id, nodes)) and list(nodes) == sorted(set(nodes)), "nodes are distinct key ids, ascending")
        _shape(all(map(_digest, digests)), "digests are SHA-256 digests in hex")
        noise = body["noise"]
        _shape(type(noise) is dict and all(type(v) is float and v > 0 for v in noise.values()),
               "noise maps metric names to positive scales")
        return cls(body["keeper"], body["catalog"], body["window_start"], body["window_end"], body["created"],
                   nodes, digests, noise, body["a"])


@dataclass(frozen=True)
class VerifiedAnswer:
    public_key: PublicKey
    body: bytes
    answer: Answer
    envelope: bytes
    digest: str


def sign_answer(answer: Answer, key: SigningKey) -> bytes:
    """The envelope of a keeper's answer; ValueError unless `answer.keeper` is the key's id."""
    if answer.keeper != key.public.key_id:
        raise ValueError("an answer names the keeper that signs it")
    return _sign(answer.to_bytes(), key, ANSWER_PREFIX)


def verify_answer(data: bytes, *, max_size: int, check_key: Callable[[PublicKey], None] | None = None) -> VerifiedAnswer:
    """Verify and decode a keeper answer envelope, as `verify_contribution` does; EnvelopeError only."""
    envelope = _open_signed(data, ANSWER_PREFIX, max_size, check_key)
    answer = Answer.from_bytes(envelope.body, max_size=max_size)
    if answer.keeper != envelope.public_key.key_id:
        raise SignatureError("key-mismatch", "body names a different keeper than the signing key")
    return VerifiedAnswer(envelope.public_key, envelope.body, answer, envelope.data, hashlib.sha256(envelope.body).hexdigest())


def keeper_noise_scales(catalog: Catalog) -> dict[str, float]:
    """What an answer declares as its noise: each federation metric's federation scale."""
    return {m.name: catalog.federation_scale(m) for m in catalog.federation_metrics}


def keeper_vector(catalog: Catalog, seeds: Sequence[bytes], noise: Sequence[int]) -> U64:
    """A = -sum of the seeds' masks + Z (mod 2^64): `noise` is Z, one signed draw per cell in vector order."""
    cells = catalog.federation_size
    if len(noise) != cells:
        raise ValueError("the noise covers every cell of the round's vector")
    total = np.zeros(cells, dtype=np.uint64)
    for seed in seeds:
        total += mask(seed, cells)
    return to_u64(noise) - total


def combine(contributions: Sequence[bytes], answers: Sequence[bytes], cells: int) -> I64:
    """sum y_i + sum A_k (mod 2^64), read as signed int64: the true sum plus the keepers' noise."""
    total = np.zeros(cells, dtype=np.uint64)
    for part in (*contributions, *answers):
        total += vector_of(part, cells)
    return total.view(np.int64)


# ---------------------------------------------------------------------------
# the hub's request to a keeper


@dataclass(frozen=True)
class RoundRequest:
    """What a hub sends a keeper: one round's participant set, as their contribution envelopes, by node key id."""

    catalog: str
    window_start: int
    window_end: int
    contributions: tuple[bytes, ...]

    def to_bytes(self) -> bytes:
        return encode_canonical({
            "catalog": self.catalog,
            "contributions": list(self.contributions),
            "format": REQUEST_FORMAT,
            "window_end": self.window_end,
            "window_start": self.window_start,
        })

    @classmethod
    def from_bytes(cls, data: bytes, *, max_size: int = MAX_REQUEST_SIZE) -> RoundRequest:
        try:
            obj = decode_canonical(data, max_size, max_str_len=1024, max_map_len=16, max_array_len=MAX_PARTICIPANTS)
        except DecodeError as exc:
            raise DecodeError(exc.reason, exc.detail, in_body=True) from None
        _shape(type(obj) is dict and set(obj) == {"catalog", "contributions", "format", "window_end", "window_start"},
               "a round request has exactly the fields of docs/protocol.md 13.5")
        _shape(obj["format"] == REQUEST_FORMAT, f"format is {REQUEST_FORMAT}")
        _window(obj)
        items = obj["contributions"]
        _shape(type(items) is tuple and all(type(i) is bytes for i in items), "contributions is an array of bin")
        return cls(obj["catalog"], obj["window_start"], obj["window_end"], items)


def sign_request(request: RoundRequest, key: SigningKey) -> bytes:
    """The envelope of a hub's round request, signed by the hub."""
    return _sign(request.to_bytes(), key, REQUEST_PREFIX)


def verify_request(
    data: bytes, *, max_size: int = MAX_REQUEST_SIZE, check_key: Callable[[PublicKey], None] | None = None
) -> tuple[PublicKey, RoundRequest]:
    """The hub key that signed a round request, and the request; EnvelopeError only (or what `check_key` raises)."""
    envelope = _open_signed(data, REQUEST_PREFIX, max_size, check_key)
    return envelope.public_key, RoundRequest.from_bytes(envelope.body, max_size=max_size)


def participants_digest(nodes: Sequence[str], digests: Sequence[str]) -> str:
    """SHA-256 (hex) of a participant set: the canonical msgpack of {"digests": [...], "nodes": [...]}."""
    return hashlib.sha256(encode_canonical({"digests": list(digests), "nodes": list(nodes)})).hexdigest()


def round_document(
    catalog: str, window_start: int, window_end: int, participants: Sequence[tuple[str, str]],
    answers: Sequence[tuple[str, str]], aggregate: bytes,
) -> bytes:
    """The canonical bytes a published round's log entry digests (docs/protocol.md 13.7): its set
    ((node, contribution digest), ascending), its keepers' answers ((keeper, answer digest),
    ascending) and its aggregate (int64 little-endian)."""
    return encode_canonical({
        "aggregate": aggregate,
        "answers": [d for _, d in answers],
        "catalog": catalog,
        "digests": [d for _, d in participants],
        "format": ROUND_FORMAT,
        "keepers": [k for k, _ in answers],
        "nodes": [n for n, _ in participants],
        "window_end": window_end,
        "window_start": window_start,
    })


__all__ = [
    "ANSWER_FORMAT", "ANSWER_PREFIX", "CONTRIBUTION_FORMAT", "CONTRIBUTION_PREFIX", "HPKE_KEY_PREFIX", "MASK_PREFIX",
    "REQUEST_PREFIX",
    "Answer", "Contribution", "EnvelopeError", "KeeperKey", "RoundRequest", "SealError", "SealedSeed",
    "VerifiedAnswer", "VerifiedContribution", "build_contribution", "check_hpke_key", "combine",
    "federation_vector", "keeper_noise_scales", "keeper_vector", "mask", "open_seed", "participants_digest",
    "round_document", "round_id", "seal_info", "seal_seed", "sign_answer", "sign_request", "to_u64", "vector_bytes", "vector_of",
    "verify_answer", "verify_contribution", "verify_request",
]
