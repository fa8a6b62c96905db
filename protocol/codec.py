"""Canonical msgpack: the one encoding of every signed body, and its strict decoder.

    LiberationError
    └── EnvelopeError           anything wrong with received bytes; `reason` is a short code
        ├── DecodeError         size, msgpack, canonical form, shape
        └── SignatureError      (protocol/envelope.py) bad signature, or another key's body

Canonical msgpack (docs/protocol.md): map keys are str, unique and sorted by
their UTF-8 bytes; every value takes its shortest msgpack form (msgpack-python's
packer); floats are float64 and finite; strings are str, byte strings bin; no
ext types. Decoding accepts exactly one encoding per value: it decodes, then
requires re-encoding to give back the bytes received.
"""

from __future__ import annotations

import math
import operator
from itertools import chain
from typing import Any, Final

import msgpack  # ships no type information: Any (pyproject's mypy overrides)

from protocol.errors import LiberationError

MAX_ENVELOPE_SIZE: Final = 8 * 1024 * 1024
"""Default limit on an envelope's (and so a body's) size in bytes."""


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
    bounds = {
        "max_str_len": size if max_str_len is None else min(size, max_str_len),
        "max_bin_len": size if max_bin_len is None else min(size, max_bin_len),
        "max_array_len": size if max_array_len is None else min(size, max_array_len),
        "max_map_len": size if max_map_len is None else min(size, max_map_len),
        "max_ext_len": size,  # ext_hook refuses every ext type, with its own reason
    }
    # Fast path: decode without per-map and per-array hooks (they were two thirds of the
    # decode), then check the tree once. It accepts only what the strict decode below
    # accepts, as the same value; anything it does not accept is decoded strictly, which
    # gives the precise reason (or, if the fast path was merely unsure, the value).
    try:
        obj = msgpack.unpackb(data, raw=False, use_list=False, strict_map_key=False, ext_hook=_reject_ext, **bounds)
    except Exception:  # noqa: BLE001, S110 - untrusted input: the strict decode names the fault
        pass
    else:
        # Duplicate keys collapse into one dict entry, so they show up as a difference here.
        if _canonical_tree(obj) and msgpack.packb(obj, use_bin_type=True) == data:
            return obj
    return _decode_strict(data, bounds)


def _decode_strict(data: bytes, bounds: dict[str, int]) -> Any:
    """`decode_canonical` with every map and array checked as it is built: the first fault, by its reason."""
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            use_list=False,
            strict_map_key=False,  # _check_map reports non-str keys with their own reason
            object_pairs_hook=_check_map,
            list_hook=_check_array,
            ext_hook=_reject_ext,
            **bounds,
        )
    except DecodeError:
        raise
    except msgpack.ExtraData:
        raise DecodeError("trailing-bytes", "bytes follow the encoded value") from None
    except Exception:  # noqa: BLE001 - untrusted input: every failure is one answer
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


def _canonical_tree(obj: Any) -> bool:
    """Whether a value decoded without hooks passes what the hooks check: str map keys in sorted
    order, finite floats, no msgpack Timestamp (duplicate keys are left to the re-encoding).

    Level by level, each level's values classified by type in one pass: a body's hundreds of
    values cost a few comprehensions, not a Python step each.
    """
    level = [obj]
    while level:
        kinds = set(map(type, level))
        if msgpack.Timestamp in kinds:
            return False
        if float in kinds and not all(map(math.isfinite, [x for x in level if type(x) is float])):
            return False
        below: list[Any] = []
        if dict in kinds:
            mappings = [x for x in level if type(x) is dict]
            for keys in {tuple(mapping) for mapping in mappings}:  # each key list once: a body's metrics share theirs
                if operator.countOf(map(type, keys), str) != len(keys) or list(keys) != sorted(keys):
                    return False
            below += chain.from_iterable(map(dict.values, mappings))
        if tuple in kinds:
            arrays = [x for x in level if type(x) is tuple]
            try:
                integers = type(sum(map(sum, arrays))) is int  # as `_all_integers`, for all of them at once
            except TypeError:
                integers = False
            if not integers:
                for items in arrays:
                    if not _all_integers(items):
                        below += items
        level = below
    return True


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
