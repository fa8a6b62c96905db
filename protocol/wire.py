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
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import msgpack  # type: ignore[import-untyped]  # ships no type information

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


def decode_canonical(data: bytes, max_size: int) -> Any:
    """Decode canonical msgpack; arrays come back as tuples. Raises DecodeError (see EnvelopeError reasons)."""
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
            max_str_len=size,
            max_bin_len=size,
            max_array_len=size,
            max_map_len=size,
            max_ext_len=size,
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


def verify_envelope(
    data: bytes,
    *,
    max_size: int = MAX_ENVELOPE_SIZE,
    check_key: Callable[[PublicKey], None] | None = None,
) -> VerifiedEnvelope:
    """Verify and decode a snapshot envelope; raises EnvelopeError (DecodeError or SignatureError) only.

    `check_key`, if given, runs after the envelope's shape is known and before
    any signature work: a hub uses it to refuse unenrolled keys first (and may
    raise its own error there, which then escapes as is).
    """
    from protocol.snapshot import Snapshot  # snapshot.py imports this module's codec

    # (1) size, before any parsing
    if len(data) > max_size:
        raise DecodeError("too-large", f"{len(data)} bytes is over the limit of {max_size}")
    data = bytes(data)

    # (2) canonical envelope: exactly body, pk, sig, v
    envelope = decode_canonical(data, max_size)
    if type(envelope) is not dict or envelope.keys() != _ENVELOPE_KEYS:
        raise DecodeError("shape", "an envelope is a map of exactly body, pk, sig and v")
    version, body, pk, sig = envelope["v"], envelope["body"], envelope["pk"], envelope["sig"]
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

    try:
        public_key = PublicKey.from_raw(pk)
    except KeyFormatError:
        raise SignatureError("bad-signature", "envelope pk is not an Ed25519 public key") from None

    # (2b) the caller's key policy (a hub: enrolled and not revoked)
    if check_key is not None:
        check_key(public_key)

    # (3) Ed25519 signature over prefix + body bytes as received, before decoding the body
    if not public_key.verify(sig, SIGNING_PREFIX + body):
        raise SignatureError("bad-signature", "signature does not verify")

    # (4) canonical body decode to a Snapshot
    try:
        snapshot = Snapshot.from_bytes(body, max_size=max_size)
    except DecodeError as exc:
        raise DecodeError(exc.reason, exc.detail, in_body=True) from None

    # (5) the body names the key that signed it
    if snapshot.node != public_key.key_id:
        raise SignatureError("key-mismatch", "body names a different node than the signing key")

    return VerifiedEnvelope(
        public_key=public_key,
        body=body,
        snapshot=snapshot,
        envelope=data,
        digest=hashlib.sha256(body).hexdigest(),
    )
