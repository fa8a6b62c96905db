"""Canonical msgpack and the signed snapshot envelope: encode, sign, verify.

    LiberationError
    └── EnvelopeError           anything wrong with received bytes; `reason` is a short code
        ├── DecodeError         size, msgpack, canonical form, shape
        └── SignatureError      bad signature, or body signed by another key than it names

Canonical msgpack (docs/protocol.md): map keys are str, unique and sorted by
their UTF-8 bytes; every value takes its shortest msgpack form (msgpack-python's
packer); floats are float64 and finite; strings are str, byte strings bin; no
ext types. Decoding accepts exactly one encoding per value: it decodes, then
requires re-encoding to give back the bytes received.

An envelope is not decoded that way: it has one canonical layout, read header
by header, so a sender who is not enrolled costs a verifier the same few
microseconds whatever the bytes hold. Only a body whose signature verified is
decoded.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import msgpack  # ships no type information: Any (pyproject's mypy overrides)

from protocol.errors import LiberationError
from protocol.keys import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, KeyFormatError, PublicKey, SigningKey

if TYPE_CHECKING:
    from protocol.snapshot import Snapshot

SIGNING_PREFIX: Final = b"liberation-analytics/snapshot/v1\x00"
"""Signed before the body bytes, so a snapshot signature means nothing in any other context."""

ENVELOPE_VERSION: Final = 1
MAX_ENVELOPE_SIZE: Final = 8 * 1024 * 1024
"""Default limit on an envelope's (and so a body's) size in bytes."""

_ENVELOPE_KEYS: Final = frozenset({"body", "pk", "sig", "v"})


class EnvelopeError(LiberationError):
    """Received snapshot bytes were refused; `reason` is a short stable code, the message is for humans.

    Reasons: DecodeError `too-large`, `malformed`, `trailing-bytes`,
    `unsupported-type`, `non-str-key`, `duplicate-key`, `non-finite`,
    `not-canonical`, `shape`, `unsupported-version`; SignatureError
    `bad-signature`, `key-mismatch`.
    """

    def __init__(self, reason: str, detail: str, *, in_body: bool = False) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.in_body = in_body
        """True when the envelope and its signature were fine and the signed body was refused."""


class DecodeError(EnvelopeError):
    """Bytes that are too large, not msgpack, not canonical, or not the expected shape."""


class SignatureError(EnvelopeError):
    """A signature that does not verify, or a body naming another key than the one that signed it."""


# ---------------------------------------------------------------------------
# canonical msgpack


def encode_canonical(obj: object) -> bytes:
    """The canonical msgpack bytes of `obj` (dict with str keys, list/tuple, int, float, str, bytes, bool, None).

    Raises TypeError for other types or non-str map keys, ValueError for a
    NaN/infinite float or an integer outside msgpack's range.
    """
    try:
        packed: bytes = msgpack.packb(_canonical(obj), use_bin_type=True)
    except OverflowError:
        raise ValueError("integer outside msgpack's range [-2**63, 2**64)") from None
    except UnicodeEncodeError:
        raise ValueError("string is not valid Unicode (lone surrogate)") from None
    return packed


def _canonical(obj: object) -> object:
    kind = type(obj)
    if kind is dict:
        mapping: dict[Any, Any] = obj  # type: ignore[assignment]
        for key in mapping:
            if type(key) is not str:
                raise TypeError(f"map keys must be str, not {type(key).__name__}")
        # Python orders str by code point, which is the order of their UTF-8 bytes.
        return {key: _canonical(mapping[key]) for key in sorted(mapping)}
    if kind is tuple or kind is list:
        items: tuple[Any, ...] | list[Any] = obj  # type: ignore[assignment]
        if _all_integers(items):
            return items  # the common case: cell arrays, packed as they are
        return [_canonical(item) for item in items]
    if kind is float:
        if not math.isfinite(obj):  # type: ignore[arg-type]
            raise ValueError("NaN and infinite floats have no canonical encoding")
        return obj
    if kind in (int, bool, str, bytes) or obj is None:
        return obj
    raise TypeError(f"{kind.__name__} has no canonical msgpack encoding")


def _all_integers(items: tuple[Any, ...] | list[Any]) -> bool:
    """True if every item is an int (or bool): a C-speed sum instead of a Python loop per cell.

    Starting from 0, adding anything but int/bool either raises TypeError or
    turns the total into a float (or another type), so an int total proves it.
    """
    try:
        total = sum(items)
    except TypeError:
        return False
    return type(total) is int


def decode_canonical(
    data: bytes,
    max_size: int,
    *,
    max_str_len: int | None = None,
    max_bin_len: int | None = None,
    max_array_len: int | None = None,
    max_map_len: int | None = None,
) -> Any:
    """Decode canonical msgpack; arrays come back as tuples. Raises DecodeError (see EnvelopeError reasons).

    The `max_*` bounds (default: the input's size) cap each string, byte
    string, array and map, before it is allocated; a value over one is `malformed`.
    """
    size = len(data)
    if size > max_size:
        raise DecodeError("too-large", f"{size} bytes is over the limit of {max_size}")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            use_list=False,
            strict_map_key=False,  # _check_map reports non-str keys with their own reason
            object_pairs_hook=_check_map,
            list_hook=_check_array,
            ext_hook=_reject_ext,
            max_str_len=size if max_str_len is None else min(size, max_str_len),
            max_bin_len=size if max_bin_len is None else min(size, max_bin_len),
            max_array_len=size if max_array_len is None else min(size, max_array_len),
            max_map_len=size if max_map_len is None else min(size, max_map_len),
            max_ext_len=size,  # ext_hook refuses every ext type, with its own reason
        )
    except DecodeError:
        raise
    except msgpack.ExtraData:
        raise DecodeError("trailing-bytes", "bytes follow the encoded value") from None
    except Exception:
        # Untrusted input: whatever msgpack trips over (truncation, invalid
        # UTF-8, reserved byte 0xc1, nesting depth) is one answer.
        raise DecodeError("malformed", "not valid msgpack") from None
    _check_scalars((obj,))
    # Maps were checked sorted and arrive in that order, so packing the decoded
    # value gives the canonical bytes; any longer int, string, array or map
    # header, or a float32, shows up as a difference.
    if msgpack.packb(obj, use_bin_type=True) != data:
        raise DecodeError("not-canonical", "a value is not in its shortest (canonical) msgpack form")
    return obj


def _check_map(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    for key in keys:
        if type(key) is not str:
            raise DecodeError("non-str-key", "map keys must be strings")
    if len(set(keys)) != len(keys):
        raise DecodeError("duplicate-key", "a map repeats a key")
    if keys != sorted(keys):
        raise DecodeError("not-canonical", "map keys are not sorted by their UTF-8 bytes")
    _check_scalars([value for _, value in pairs])
    return dict(pairs)


def _check_array(items: tuple[Any, ...]) -> tuple[Any, ...]:
    _check_scalars(items)
    return items


def _check_scalars(items: tuple[Any, ...] | list[Any]) -> None:
    # Nested maps and arrays were checked by their own hooks (msgpack calls them innermost first).
    if _all_integers(items):
        return
    for item in items:
        kind = type(item)
        if kind is float:
            if not math.isfinite(item):
                raise DecodeError("non-finite", "NaN and infinite floats are not allowed")
        elif kind is msgpack.Timestamp:  # ext type -1 bypasses ext_hook
            raise DecodeError("unsupported-type", "msgpack ext types are not allowed")


def _reject_ext(code: int, data: bytes) -> None:
    raise DecodeError("unsupported-type", "msgpack ext types are not allowed")


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
        from protocol.snapshot import Snapshot  # snapshot.py imports this module's codec

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
