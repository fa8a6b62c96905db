"""The signed snapshot envelope: sign, read its fixed layout, verify.

An envelope is not decoded as generic msgpack: it has one canonical layout,
read header by header, so a sender who is not enrolled costs a verifier the
same few microseconds whatever the bytes hold. Only a body whose signature
verified is decoded (protocol/codec.py, then protocol/snapshot.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from protocol.codec import (
    MAX_ENVELOPE_SIZE,
    DecodeError,
    EnvelopeError,
    encode_canonical,
)
from protocol.keys import (
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    KeyFormatError,
    PublicKey,
    SigningKey,
)
from protocol.snapshot import Snapshot

SIGNING_PREFIX: Final = b"liberation-analytics/snapshot/v1\x00"
"""Signed before the body bytes, so a snapshot signature means nothing in any other context."""

ENVELOPE_VERSION: Final = 1

_ENVELOPE_KEYS: Final = frozenset({"body", "pk", "sig", "v"})


class SignatureError(EnvelopeError):
    """A signature that does not verify, or a body naming another key than the one that signed it."""


# ---------------------------------------------------------------------------
# envelope


def sign_body(body: bytes, key: SigningKey) -> bytes:
    """The envelope of `body` signed by `key`: `{"body", "pk", "sig", "v": 1}` in canonical msgpack.

    Signs the bytes as given; `verify_envelope` accepts the result only if
    they are a canonical Snapshot naming `key`.
    """
    signature = key.sign(SIGNING_PREFIX + body)
    return encode_canonical({"body": body, "pk": key.public.raw, "sig": signature, "v": ENVELOPE_VERSION})


def sign_snapshot(snapshot: Snapshot, key: SigningKey) -> bytes:
    """The envelope bytes of `snapshot` signed by `key`; ValueError unless `snapshot.node` is `key`'s id."""
    if snapshot.node != key.public.key_id:
        raise ValueError(f"snapshot names node {snapshot.node} but the key's id is {key.public.key_id}")
    return sign_body(snapshot.to_bytes(), key)


@dataclass(frozen=True, slots=True)
class VerifiedEnvelope:
    """An envelope whose signature verified and whose body decoded to a Snapshot of the signing key."""

    public_key: PublicKey
    body: bytes
    """The body bytes exactly as signed."""
    snapshot: Snapshot
    envelope: bytes
    """The envelope bytes exactly as received."""
    digest: str
    """Lowercase hex SHA-256 of `body`: identifies the snapshot's content."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """An envelope read as its fixed layout: its key is usable, but nothing is verified and the body is not decoded.

    `from_bytes` reads headers only (no generic decoder, no recursion), so its
    cost does not depend on what an unauthenticated sender puts in the body;
    a hub looks the key up next and verifies (`verify`) only enrolled keys.
    """

    public_key: PublicKey
    body: bytes
    """The body bytes exactly as received (not decoded)."""
    signature: bytes
    data: bytes
    """The envelope bytes exactly as received."""

    @classmethod
    def from_bytes(cls, data: bytes, *, max_size: int = MAX_ENVELOPE_SIZE) -> Envelope:
        """Steps (1)-(3) of `verify_envelope`; raises DecodeError, or SignatureError for an unusable `pk`."""
        # (1) size, before any parsing
        if len(data) > max_size:
            raise DecodeError("too-large", f"{len(data)} bytes is over the limit of {max_size}")
        data = bytes(data)
        # (2) the one canonical layout: {"body": bin, "pk": bin 32, "sig": bin 64, "v": 1}
        body, pk, sig = _read_layout(data)
        # (3) pk is a usable Ed25519 key: canonical, not of small order
        try:
            public_key = PublicKey.from_raw(pk)
        except KeyFormatError:
            raise SignatureError("bad-signature", "envelope pk is not a usable Ed25519 public key") from None
        return cls(public_key, body, sig, data)

    def verify(self, *, max_size: int = MAX_ENVELOPE_SIZE) -> VerifiedEnvelope:
        """Steps (5)-(7) of `verify_envelope`: the signature, then the body decode, then the body's key id."""
        # (5) Ed25519 signature over prefix + body bytes as received, before decoding the body
        if not self.public_key.verify(self.signature, SIGNING_PREFIX + self.body):
            raise SignatureError("bad-signature", "signature does not verify")
        # (6) canonical body decode to a Snapshot, each string, array and map bounded
        try:
            snapshot = Snapshot.from_bytes(self.body, max_size=max_size)
        except DecodeError as exc:
            raise DecodeError(exc.reason, exc.detail, in_body=True) from None
        # (7) the body names the key that signed it
        if snapshot.node != self.public_key.key_id:
            raise SignatureError("key-mismatch", "body names a different node than the signing key")
        return VerifiedEnvelope(
            public_key=self.public_key,
            body=self.body,
            snapshot=snapshot,
            envelope=self.data,
            digest=hashlib.sha256(self.body).hexdigest(),
        )


def verify_envelope(
    data: bytes,
    *,
    max_size: int = MAX_ENVELOPE_SIZE,
    check_key: Callable[[PublicKey], None] | None = None,
) -> VerifiedEnvelope:
    """Verify and decode a snapshot envelope; raises EnvelopeError (DecodeError or SignatureError) only.

    `check_key`, if given, runs once the key is known and before any signature
    work or body decode: a hub uses it to refuse unenrolled keys first (and may
    raise its own error there, which then escapes as is).
    """
    # (1)-(3) size, fixed layout, usable key: headers only, whatever the body holds
    envelope = Envelope.from_bytes(data, max_size=max_size)
    # (4) the caller's key policy (a hub: enrolled and not revoked)
    if check_key is not None:
        check_key(envelope.public_key)
    # (5)-(7) signature over the body as received, then the body decode, then its key id
    return envelope.verify(max_size=max_size)


# ---------------------------------------------------------------------------
# the envelope's fixed layout, read header by header


_ENVELOPE_SHAPE: Final = "an envelope is a map of exactly body (bin), pk (32-byte bin), sig (64-byte bin) and v (int)"


def _read_layout(data: bytes) -> tuple[bytes, bytes, bytes]:
    """(body, pk, sig) of an envelope in its canonical layout; DecodeError with the most specific reason otherwise.

        84  a4"body" c4|c5|c6 <len> <body>  a2"pk" c4 20 <32>  a3"sig" c4 40 <64>  a1"v" 01

    Reads at most four map entries, a header each, and never descends into a
    nested value: the work is the same for any input (the body is copied once).
    """
    reader = _Reader(data)
    count = reader.map_header()
    if count != len(_ENVELOPE_KEYS):
        raise DecodeError("shape", _ENVELOPE_SHAPE)
    fields: dict[str, bytes | int | None] = {}
    for _ in range(count):
        key = reader.key()
        if key in fields:
            raise DecodeError("duplicate-key", "a map repeats a key")
        fields[key] = reader.scalar()
    if reader.position != len(data):
        raise DecodeError("trailing-bytes", "bytes follow the encoded value")
    if list(fields) != sorted(fields):
        raise DecodeError("not-canonical", "map keys are not sorted by their UTF-8 bytes")
    if fields.keys() != _ENVELOPE_KEYS:
        raise DecodeError("shape", _ENVELOPE_SHAPE)
    version, body, pk, sig = fields["v"], fields["body"], fields["pk"], fields["sig"]
    if type(version) is not int:
        raise DecodeError("shape", "envelope v must be an integer")
    if version != ENVELOPE_VERSION:
        raise DecodeError("unsupported-version", f"envelope version {version} is not supported")
    if type(body) is not bytes:
        raise DecodeError("shape", "envelope body must be a byte string (bin)")
    if type(pk) is not bytes or len(pk) != PUBLIC_KEY_SIZE:
        raise DecodeError("shape", "envelope pk must be 32 bytes (bin)")
    if type(sig) is not bytes or len(sig) != SIGNATURE_SIZE:
        raise DecodeError("shape", "envelope sig must be 64 bytes (bin)")
    return body, pk, sig


class _Reader:
    """Reads msgpack headers and scalars from the start of a buffer; refuses non-canonical forms as it goes."""

    __slots__ = ("data", "position")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def _take(self, n: int) -> bytes:
        end = self.position + n
        if end > len(self.data):
            raise DecodeError("malformed", "not valid msgpack")
        chunk = self.data[self.position : end]
        self.position = end
        return chunk

    def _uint(self, width: int) -> int:
        return int.from_bytes(self._take(width), "big")

    def map_header(self) -> int:
        """The entry count of a map header; `shape` for anything but a map."""
        first = self._take(1)[0]
        if 0x80 <= first <= 0x8F:
            return first & 0x0F
        if first in (0xDE, 0xDF):
            count = self._uint(2 if first == 0xDE else 4)
            if count < (16 if first == 0xDE else 1 << 16):
                raise DecodeError("not-canonical", "a map header is not in its shortest form")
            return count
        if first == 0xC1:
            raise DecodeError("malformed", "not valid msgpack")
        raise DecodeError("shape", _ENVELOPE_SHAPE)

    def _sized(self, first: int, fix_base: int | None, codes: tuple[int, int, int]) -> int | None:
        """The length a str (fixstr at `fix_base`) or bin header gives, None if `first` is neither.

        Refuses a header longer than the length needs: str8 below 32, str16/bin16
        below 2^8, str32/bin32 below 2^16.
        """
        if fix_base is not None and fix_base <= first < fix_base + 32:
            return first - fix_base
        if first not in codes:
            return None
        width = 1 << codes.index(first)
        length = self._uint(width)
        shortest = (32 if fix_base is not None else 0) if width == 1 else 1 << (4 * width)
        if length < shortest:
            raise DecodeError("not-canonical", "a length header is not in its shortest form")
        return length

    def key(self) -> str:
        """A str map key."""
        first = self._take(1)[0]
        length = self._sized(first, 0xA0, (0xD9, 0xDA, 0xDB))
        if length is None:
            raise DecodeError("malformed" if first == 0xC1 else "non-str-key", "map keys must be strings")
        try:
            return self._take(length).decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError("malformed", "not valid msgpack") from None

    def scalar(self) -> bytes | int | None:
        """A bin as bytes, an integer as int, any other scalar skipped as None; `shape` at a map or array."""
        first = self._take(1)[0]
        if first <= 0x7F:
            return first
        if first >= 0xE0:
            return first - 0x100
        if 0xCC <= first <= 0xCF:  # uint8 .. uint64: only for what a shorter form cannot hold
            width = 1 << (first - 0xCC)
            value = self._uint(width)
            if value < (0x80 if width == 1 else 1 << (4 * width)):
                raise DecodeError("not-canonical", "an integer is not in its shortest form")
            return value
        if 0xD0 <= first <= 0xD3:  # int8 .. int64: only for negatives a shorter form cannot hold
            width = 1 << (first - 0xD0)
            value = int.from_bytes(self._take(width), "big", signed=True)
            if value >= (-32 if width == 1 else -(1 << (8 * width // 2 - 1))):
                raise DecodeError("not-canonical", "an integer is not in its shortest form")
            return value
        length = self._sized(first, None, (0xC4, 0xC5, 0xC6))
        if length is not None:
            return self._take(length)
        length = self._sized(first, 0xA0, (0xD9, 0xDA, 0xDB))
        if length is None:
            length = {0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8}.get(first)  # nil, bool, float
        if length is not None:
            self._take(length)
            return None
        if first == 0xC1:
            raise DecodeError("malformed", "not valid msgpack")
        if 0xC7 <= first <= 0xC9 or 0xD4 <= first <= 0xD8:
            raise DecodeError("unsupported-type", "msgpack ext types are not allowed")
        raise DecodeError("shape", _ENVELOPE_SHAPE)  # a map or an array: never descended into
