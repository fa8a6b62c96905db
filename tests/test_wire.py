"""Canonical msgpack, the snapshot body and the signed envelope: round trips, rejections, tampering."""

from __future__ import annotations

import math
import random
import struct
import time
from collections.abc import Callable
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import codec
from protocol.catalog import Catalog, load_catalog, parse_catalog
from protocol.codec import (
    MAX_ENVELOPE_SIZE,
    DecodeError,
    EnvelopeError,
    decode_canonical,
    encode_canonical,
)
from protocol.envelope import (
    SIGNING_PREFIX,
    Envelope,
    SignatureError,
    sign_body,
    sign_snapshot,
    verify_envelope,
)
from protocol.errors import LiberationError
from protocol.events import SLUG_PATTERN
from protocol.keys import PublicKey, SigningKey
from protocol.snapshot import (
    FORMAT,
    INT64_MAX,
    INT64_MIN,
    MetricCells,
    Snapshot,
    max_envelope_size,
)

KEY = SigningKey.from_seed(bytes(range(32)))
NODE = KEY.public.key_id
CATALOG = "ab" * 32
BIG = 1 << 30
JAN_23_2025 = 1_737_590_400

# --- strategies -------------------------------------------------------------

INT64 = st.integers(-200, 200) | st.integers(INT64_MIN, INT64_MAX)
POSITIVE_FLOATS = st.floats(min_value=0.0, exclude_min=True, allow_nan=False, allow_infinity=False)
NON_NEGATIVE_FLOATS = st.floats(min_value=0.0, allow_nan=False, allow_infinity=False)
METRIC_NAMES = st.from_regex(SLUG_PATTERN, fullmatch=True)


def index_arrays(max_size: int) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, 70_000) | st.integers(0, INT64_MAX), unique=True, max_size=max_size).map(sorted)


@st.composite
def metric_cells(draw: st.DrawFn) -> MetricCells:
    idx = draw(index_arrays(40))
    other_idx = draw(index_arrays(5))
    return MetricCells(
        epsilon=draw(POSITIVE_FLOATS),
        scale=draw(POSITIVE_FLOATS),
        variance=draw(NON_NEGATIVE_FLOATS),
        threshold=draw(st.integers(0, 50) | st.integers(0, INT64_MAX)),
        idx=idx,
        val=draw(st.lists(INT64, min_size=len(idx), max_size=len(idx))),
        other_idx=other_idx,
        other_val=draw(st.lists(INT64, min_size=len(other_idx), max_size=len(other_idx))),
    )


@st.composite
def snapshots(draw: st.DrawFn, node: str | None = None) -> Snapshot:
    start = draw(st.integers(0, 2**40)) * 3600
    return Snapshot(
        format=FORMAT,
        node=node if node is not None else draw(st.binary(min_size=16, max_size=16)).hex(),
        catalog=draw(st.binary(min_size=32, max_size=32)).hex(),
        window_start=start,
        window_end=start + 3600 * draw(st.integers(1, 31 * 24)),
        seq=draw(st.integers(1, INT64_MAX)),
        created=draw(st.integers(0, INT64_MAX)),
        nodes=draw(st.integers(1, INT64_MAX)),
        metrics=draw(st.dictionaries(METRIC_NAMES, metric_cells(), max_size=4)),
    )


SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(INT64_MIN, 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.binary(max_size=40)
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=6),
    max_leaves=25,
)


def _tupled(value: Any) -> Any:
    """What decoding gives back: arrays as tuples."""
    if isinstance(value, list):
        return tuple(_tupled(item) for item in value)
    if isinstance(value, dict):
        return {key: _tupled(item) for key, item in value.items()}
    return value


def minimal(**changes: Any) -> Snapshot:
    fields: dict[str, Any] = dict(
        format=FORMAT,
        node=NODE,
        catalog=CATALOG,
        window_start=JAN_23_2025,
        window_end=JAN_23_2025 + 86_400,
        seq=1,
        created=JAN_23_2025 + 90_000,
        nodes=1,
        metrics={
            "usage": MetricCells(
                epsilon=1.0, scale=1.0, variance=1.84, threshold=10, idx=[3], val=[12], other_idx=[], other_val=[]
            )
        },
    )
    fields.update(changes)
    return Snapshot(**fields)


def _reason(call: Callable[[], object]) -> str:
    with pytest.raises(EnvelopeError) as caught:
        call()
    return caught.value.reason


# --- canonical msgpack -------------------------------------------------------


@given(VALUES)
def test_canonical_round_trip(value: Any) -> None:
    data = encode_canonical(value)
    assert encode_canonical(value) == data
    decoded = decode_canonical(data, BIG)
    assert decoded == _tupled(value)
    assert encode_canonical(decoded) == data


@given(st.binary(max_size=64))
def test_decode_accepts_nothing_but_canonical_bytes(data: bytes) -> None:
    try:
        value = decode_canonical(data, BIG)
    except DecodeError:
        return
    assert encode_canonical(value) == data


@given(VALUES, st.data())
def test_a_mutated_encoding_decodes_only_if_it_is_canonical(value: Any, data: st.DataObject) -> None:
    encoded = bytearray(encode_canonical(value))
    position = data.draw(st.integers(0, len(encoded) - 1))
    encoded[position] = data.draw(st.integers(0, 255))
    try:
        decoded = decode_canonical(bytes(encoded), BIG)
    except DecodeError:
        return
    assert encode_canonical(decoded) == bytes(encoded)


def _outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "value", call()
    except DecodeError as exc:
        return "refused", exc.reason


@given(VALUES, st.data())
def test_the_fast_decode_answers_as_the_strict_one(value: Any, data: st.DataObject) -> None:
    """decode_canonical's hook-free path: same value or same reason as decoding with every hook, mutated bytes too."""
    encoded = bytearray(encode_canonical(value))
    for _ in range(data.draw(st.integers(0, 2))):
        encoded[data.draw(st.integers(0, len(encoded) - 1))] = data.draw(st.integers(0, 255))
    bounds = dict.fromkeys(("max_str_len", "max_bin_len", "max_array_len", "max_map_len", "max_ext_len"), len(encoded))
    assert _outcome(lambda: decode_canonical(bytes(encoded), BIG)) == _outcome(
        lambda: codec._decode_strict(bytes(encoded), bounds)
    )


def test_map_keys_are_ordered_by_their_utf8_bytes() -> None:
    # UTF-16 order would put U+1F600 before U+FFFF; UTF-8 byte order does not.
    data = encode_canonical({"\U0001f600": 4, "\uffff": 3, "é": 2, "z": 1, "": 0})
    keys = [key for key, _ in msgpack.unpackb(data, object_pairs_hook=list)]
    assert keys == ["", "z", "é", "\uffff", "\U0001f600"]
    assert [key.encode() for key in keys] == sorted(key.encode() for key in keys)


def test_floats_are_always_float64() -> None:
    assert encode_canonical(1.5) == b"\xcb" + struct.pack(">d", 1.5)
    assert encode_canonical(1.0) != encode_canonical(1)


def test_decoded_arrays_are_tuples() -> None:
    assert decode_canonical(encode_canonical([1, [2, 3], {"a": [4]}]), BIG) == (1, (2, 3), {"a": (4,)})


@pytest.mark.parametrize(
    "value, error",
    [
        pytest.param(math.nan, ValueError, id="nan"),
        pytest.param([1, math.inf], ValueError, id="inf-in-array"),
        pytest.param({"a": -math.inf}, ValueError, id="inf-in-map"),
        pytest.param(2**64, ValueError, id="int-too-large"),
        pytest.param([1, -(2**63) - 1], ValueError, id="int-too-small"),
        pytest.param({1: 2}, TypeError, id="int-key"),
        pytest.param({b"a": 2}, TypeError, id="bytes-key"),
        pytest.param({1, 2}, TypeError, id="set"),
        pytest.param(bytearray(b"x"), TypeError, id="bytearray"),
        pytest.param("\ud800", ValueError, id="lone-surrogate"),
    ],
)
def test_encode_refuses_what_has_no_canonical_form(value: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        encode_canonical(value)


def _f64(x: float) -> bytes:
    return b"\xcb" + struct.pack(">d", x)


NON_CANONICAL = [
    pytest.param(b"\x82\xa1b\x01\xa1a\x02", "not-canonical", id="unsorted-keys"),
    pytest.param(b"\x82\xa2\xc3\xa9\x01\xa1z\x02", "not-canonical", id="unsorted-keys-utf8"),
    pytest.param(b"\xca" + struct.pack(">f", 1.5), "not-canonical", id="float32"),
    pytest.param(b"\x91\xca" + struct.pack(">f", 0.25), "not-canonical", id="float32-in-array"),
    pytest.param(b"\xcd\x00\x05", "not-canonical", id="uint16-for-5"),
    pytest.param(b"\xcc\x05", "not-canonical", id="uint8-for-5"),
    pytest.param(b"\xd0\x05", "not-canonical", id="int8-for-5"),
    pytest.param(b"\xd3" + b"\xff" * 8, "not-canonical", id="int64-for-minus-1"),
    pytest.param(b"\xd1\x00\xc8", "not-canonical", id="int16-for-200"),
    pytest.param(b"\xd9\x01a", "not-canonical", id="str8-for-fixstr"),
    pytest.param(b"\xc5\x00\x01x", "not-canonical", id="bin16-for-bin8"),
    pytest.param(b"\xdc\x00\x01\x01", "not-canonical", id="array16-for-fixarray"),
    pytest.param(b"\xde\x00\x01\xa1a\x01", "not-canonical", id="map16-for-fixmap"),
    pytest.param(b"\x82\xa1a\x01\xa1a\x02", "duplicate-key", id="duplicate-keys"),
    pytest.param(b"\x81\xa1x\x82\xa1a\x01\xa1a\x01", "duplicate-key", id="duplicate-keys-nested"),
    pytest.param(b"\x01\x02", "trailing-bytes", id="trailing-bytes"),
    pytest.param(b"\x81\xa1a\x01\x00", "trailing-bytes", id="trailing-zero"),
    pytest.param(_f64(math.nan), "non-finite", id="nan"),
    pytest.param(b"\xca" + struct.pack(">f", math.nan), "non-finite", id="nan-float32"),
    pytest.param(b"\x92\x01" + _f64(math.inf), "non-finite", id="inf-in-array"),
    pytest.param(b"\x81\xa1a" + _f64(-math.inf), "non-finite", id="minus-inf-in-map"),
    pytest.param(b"\x81\x01\x02", "non-str-key", id="int-key"),
    pytest.param(b"\x81\xc4\x01a\x01", "non-str-key", id="bin-key"),
    pytest.param(b"\x81\xc0\x01", "non-str-key", id="nil-key"),
    pytest.param(b"\xd4\x05\x00", "unsupported-type", id="ext"),
    pytest.param(b"\x91\xc7\x01\x05a", "unsupported-type", id="ext8-in-array"),
    pytest.param(b"\xd6\xff\x00\x00\x00\x01", "unsupported-type", id="timestamp"),
    pytest.param(b"\x92\x01\xd6\xff\x00\x00\x00\x01", "unsupported-type", id="timestamp-in-array"),
    pytest.param(b"\x81\xa1t\xd6\xff\x00\x00\x00\x01", "unsupported-type", id="timestamp-in-map"),
    pytest.param(b"", "malformed", id="empty"),
    pytest.param(b"\x92\x01", "malformed", id="truncated"),
    pytest.param(b"\xa1\xff", "malformed", id="invalid-utf8"),
    pytest.param(b"\xa2\xed\xa0", "malformed", id="truncated-utf8"),
    pytest.param(b"\xa3\xed\xa0\x80", "malformed", id="utf8-surrogate"),
    pytest.param(b"\xc1", "malformed", id="reserved-0xc1"),
    pytest.param(b"\xdd\xff\xff\xff\xff", "malformed", id="huge-array-header"),
    pytest.param(b"\x91" * 5000 + b"\x01", "malformed", id="deep-nesting"),
]


@pytest.mark.parametrize("data, reason", NON_CANONICAL)
def test_decode_rejects(data: bytes, reason: str) -> None:
    assert _reason(lambda: decode_canonical(data, BIG)) == reason


def test_decode_rejects_input_over_max_size_before_parsing() -> None:
    data = encode_canonical("x" * 100)
    assert decode_canonical(data, len(data)) == "x" * 100
    assert _reason(lambda: decode_canonical(data, len(data) - 1)) == "too-large"
    assert _reason(lambda: decode_canonical(b"\xc1" * 10, 9)) == "too-large"


def _int_encodings(n: int) -> set[bytes]:
    """Every msgpack encoding of the integer n."""
    out = set()
    if 0 <= n <= 0x7F:
        out.add(bytes([n]))
    if -32 <= n < 0:
        out.add(struct.pack(">b", n))
    for code, fmt in ((0xCC, ">B"), (0xCD, ">H"), (0xCE, ">I"), (0xCF, ">Q"),
                      (0xD0, ">b"), (0xD1, ">h"), (0xD2, ">i"), (0xD3, ">q")):  # fmt: skip
        try:
            out.add(bytes([code]) + struct.pack(fmt, n))
        except struct.error:
            pass
    return out


def _str_encodings(text: str) -> set[bytes]:
    raw = text.encode()
    out = {b"\xdb" + struct.pack(">I", len(raw)) + raw}
    if len(raw) < 2**16:
        out.add(b"\xda" + struct.pack(">H", len(raw)) + raw)
    if len(raw) < 2**8:
        out.add(b"\xd9" + struct.pack(">B", len(raw)) + raw)
    if len(raw) < 32:
        out.add(bytes([0xA0 | len(raw)]) + raw)
    return out


def _bin_encodings(raw: bytes) -> set[bytes]:
    out = {b"\xc6" + struct.pack(">I", len(raw)) + raw, b"\xc5" + struct.pack(">H", len(raw)) + raw}
    if len(raw) < 2**8:
        out.add(b"\xc4" + struct.pack(">B", len(raw)) + raw)
    return out


def _array_encodings(items: list[int]) -> set[bytes]:
    body = b"".join(msgpack.packb(item) for item in items)
    out = {b"\xdd" + struct.pack(">I", len(items)) + body, b"\xdc" + struct.pack(">H", len(items)) + body}
    if len(items) < 16:
        out.add(bytes([0x90 | len(items)]) + body)
    return out


def _map_encodings(mapping: dict[str, int]) -> set[bytes]:
    body = b"".join(msgpack.packb(key) + msgpack.packb(mapping[key]) for key in sorted(mapping))
    out = {b"\xdf" + struct.pack(">I", len(mapping)) + body, b"\xde" + struct.pack(">H", len(mapping)) + body}
    if len(mapping) < 16:
        out.add(bytes([0x80 | len(mapping)]) + body)
    return out


def _float_encodings(x: float) -> set[bytes]:
    out = {_f64(x)}
    if struct.unpack(">f", struct.pack(">f", x))[0] == x:
        out.add(b"\xca" + struct.pack(">f", x))
    return out


@settings(max_examples=300)
@given(
    st.one_of(
        st.integers(INT64_MIN, 2**64 - 1).map(lambda n: (n, _int_encodings(n))),
        st.text(max_size=40).map(lambda s: (s, _str_encodings(s))),
        st.binary(max_size=40).map(lambda b: (b, _bin_encodings(b))),
        st.lists(st.integers(-40, 200), max_size=20).map(lambda a: (tuple(a), _array_encodings(a))),
        st.dictionaries(st.text(max_size=4), st.integers(0, 3), max_size=20).map(lambda m: (m, _map_encodings(m))),
        st.floats(allow_nan=False, allow_infinity=False, width=32).map(lambda x: (x, _float_encodings(x))),
    )
)
def test_exactly_one_encoding_of_each_value_is_accepted(case: tuple[Any, set[bytes]]) -> None:
    value, encodings = case
    canonical = encode_canonical(value)
    assert canonical in encodings
    for data in encodings:
        if data == canonical:
            assert decode_canonical(data, BIG) == value
        else:
            assert _reason(lambda: decode_canonical(data, BIG)) == "not-canonical"  # noqa: B023 - called at once


# --- snapshot bodies ----------------------------------------------------------


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(snapshots())
def test_snapshot_round_trip(snapshot: Snapshot) -> None:
    body = snapshot.to_bytes()
    assert snapshot.to_bytes() == body
    decoded = Snapshot.from_bytes(body)
    assert decoded == snapshot
    assert decoded.to_bytes() == body
    assert Snapshot.model_validate(snapshot.model_dump(mode="json")) == snapshot


def test_format_constant_matches_the_model() -> None:
    assert FORMAT == "liberation-snapshot/1"
    assert minimal().format == FORMAT


def test_snapshot_is_frozen_and_stores_tuples() -> None:
    snapshot = minimal()
    assert snapshot.metrics["usage"].idx == (3,)
    with pytest.raises(ValueError):
        snapshot.seq = 2


def _body_dict(snapshot: Snapshot) -> dict[str, Any]:
    return msgpack.unpackb(snapshot.to_bytes())  # type: ignore[no-any-return]


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    *parents, last = path.split(".")

    def mutate(body: dict[str, Any]) -> None:
        target = body
        for name in parents:
            target = target[name]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value

    return mutate


def _cells(**fields: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(body: dict[str, Any]) -> None:
        body["metrics"]["usage"].update(fields)

    return mutate


_DELETE = object()
_START = JAN_23_2025

SHAPE_ERRORS = [
    pytest.param(_set("metrics.usage.epsilon", 1), id="int-for-float"),
    pytest.param(_set("metrics.usage.scale", 0.0), id="scale-zero"),
    pytest.param(_set("metrics.usage.epsilon", -0.5), id="epsilon-negative"),
    pytest.param(_set("metrics.usage.variance", -1.0), id="variance-negative"),
    pytest.param(_set("metrics.usage.threshold", -1), id="threshold-negative"),
    pytest.param(_set("metrics.usage.threshold", 10.0), id="float-for-int"),
    pytest.param(_set("metrics.usage.val", [True]), id="bool-in-val"),
    pytest.param(_set("metrics.usage.val", [12.0]), id="float-in-val"),
    pytest.param(_set("metrics.usage.val", [2**63]), id="val-over-int64"),
    pytest.param(_set("metrics.usage.val", [None]), id="nil-in-val"),
    pytest.param(_set("metrics.usage.idx", ["3"]), id="str-in-idx"),
    pytest.param(_set("metrics.usage.idx", [False]), id="bool-in-idx"),
    pytest.param(_set("metrics.usage.idx", [-1]), id="idx-negative"),
    pytest.param(_set("metrics.usage.idx", [2**63]), id="idx-over-int64"),
    pytest.param(_set("metrics.usage.idx", 3), id="idx-not-array"),
    pytest.param(_set("metrics.usage.idx", {"3": 1}), id="idx-map"),
    pytest.param(_set("metrics.usage.val", [1, 2]), id="length-mismatch"),
    pytest.param(_set("metrics.usage.other_idx", [0]), id="other-length-mismatch"),
    pytest.param(_cells(idx=[5, 3], val=[12, 12]), id="idx-descending"),
    pytest.param(_cells(idx=[3, 3], val=[12, 12]), id="idx-duplicate"),
    pytest.param(_cells(other_idx=[2, 1], other_val=[-4, 9]), id="other-idx-descending"),
    pytest.param(_cells(other_idx=[-1], other_val=[9]), id="other-idx-negative"),
    pytest.param(_cells(other_idx=[0], other_val=[2**63]), id="other-val-over-int64"),
    pytest.param(_set("metrics.usage.extra", 1), id="extra-cell-field"),
    pytest.param(_set("metrics.usage.val", _DELETE), id="missing-cell-field"),
    pytest.param(_set("metrics.usage", 1), id="metric-not-map"),
    pytest.param(_set("metrics", [1]), id="metrics-not-map"),
    pytest.param(_set("metrics.Usage", _body_dict(minimal())["metrics"]["usage"]), id="metric-name-uppercase"),
    pytest.param(_set("metrics.usage\n", _body_dict(minimal())["metrics"]["usage"]), id="metric-name-newline"),
    pytest.param(_set("metrics.-usage", _body_dict(minimal())["metrics"]["usage"]), id="metric-name-dash-first"),
    pytest.param(_set("metrics." + "u" * 65, _body_dict(minimal())["metrics"]["usage"]), id="metric-name-too-long"),
    pytest.param(_set("format", "liberation-snapshot/2"), id="format"),
    pytest.param(_set("node", NODE.upper()), id="node-uppercase"),
    pytest.param(_set("node", NODE[:-1]), id="node-short"),
    pytest.param(_set("node", bytes.fromhex(NODE)), id="node-bin"),
    pytest.param(_set("catalog", "AB" * 32), id="catalog-uppercase"),
    pytest.param(_set("window_start", _START + 1), id="window-not-whole-hour"),
    pytest.param(_set("window_end", _START), id="window-empty"),
    pytest.param(_set("window_end", _START - 3600), id="window-reversed"),
    pytest.param(_set("window_end", _START + 31 * 86_400 + 3600), id="window-over-31-days"),
    pytest.param(_set("window_start", -3600), id="window-before-1970"),
    pytest.param(_set("seq", 0), id="seq-zero"),
    pytest.param(_set("seq", 2**63), id="seq-over-int64"),
    pytest.param(_set("nodes", 0), id="nodes-zero"),
    pytest.param(_set("created", -1), id="created-negative"),
    pytest.param(_set("created", True), id="bool-for-int"),
    pytest.param(_set("seq", _DELETE), id="missing-field"),
    pytest.param(_set("extra", 1), id="extra-field"),
]


@pytest.mark.parametrize("mutate", SHAPE_ERRORS)
def test_snapshot_decode_rejects_wrong_shapes(mutate: Callable[[dict[str, Any]], None]) -> None:
    body = _body_dict(minimal())
    mutate(body)
    data = encode_canonical(body)  # canonical msgpack, wrong snapshot
    with pytest.raises(DecodeError) as caught:
        Snapshot.from_bytes(data)
    assert caught.value.reason == "shape"
    assert str(caught.value).startswith("invalid snapshot: ")


def test_snapshot_decode_rejects_too_many_metrics() -> None:
    body = _body_dict(minimal())
    body["metrics"] = {f"m{i}": body["metrics"]["usage"] for i in range(257)}
    assert _reason(lambda: Snapshot.from_bytes(encode_canonical(body))) == "shape"
    body["metrics"] = {f"m{i}": body["metrics"]["m0"] for i in range(256)}
    assert len(Snapshot.from_bytes(encode_canonical(body)).metrics) == 256


@pytest.mark.parametrize("body", [pytest.param([1], id="array"), pytest.param("snapshot", id="str")])
def test_snapshot_body_must_be_a_map(body: Any) -> None:
    assert _reason(lambda: Snapshot.from_bytes(encode_canonical(body))) == "shape"


def test_snapshot_decode_respects_max_size() -> None:
    body = minimal().to_bytes()
    assert _reason(lambda: Snapshot.from_bytes(body, max_size=len(body) - 1)) == "too-large"


def test_window_of_exactly_31_days_is_allowed() -> None:
    assert minimal(window_end=_START + 31 * 86_400).window_end == _START + 31 * 86_400


def test_constructing_a_snapshot_from_python_is_as_strict_as_decoding() -> None:
    with pytest.raises(ValueError):
        minimal(seq=True)
    with pytest.raises(ValueError):
        MetricCells(epsilon=1, scale=1.0, variance=0.0, threshold=0, idx=[], val=[], other_idx=[], other_val=[])
    with pytest.raises(ValueError):
        MetricCells(epsilon=1.0, scale=1.0, variance=0.0, threshold=0, idx=[1], val=[1.5], other_idx=[], other_val=[])


def test_decoding_a_large_body_stays_fast() -> None:
    # 20 metrics x 5,000 cells: a regression guard (about 20 ms here), not a benchmark.
    rng = random.Random(3)
    metrics = {
        f"metric-{m}": MetricCells(
            epsilon=0.05,
            scale=20.0,
            variance=800.0,
            threshold=10,
            idx=sorted(rng.sample(range(100_000), 5000)),
            val=[rng.randrange(-50, 5000) for _ in range(5000)],
            other_idx=[0],
            other_val=[7],
        )
        for m in range(20)
    }
    snapshot = minimal(metrics=metrics)
    body = snapshot.to_bytes()
    started = time.perf_counter()
    assert Snapshot.from_bytes(body) == snapshot
    assert time.perf_counter() - started < 1.0


# --- envelopes ---------------------------------------------------------------


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(snapshots(node=NODE))
def test_envelope_round_trip(snapshot: Snapshot) -> None:
    envelope = sign_snapshot(snapshot, KEY)
    assert sign_snapshot(snapshot, KEY) == envelope
    verified = verify_envelope(envelope)
    assert verified.snapshot == snapshot
    assert verified.body == snapshot.to_bytes()
    assert verified.envelope == envelope
    assert verified.public_key == KEY.public
    assert verified.digest == __import__("hashlib").sha256(verified.body).hexdigest()


def test_envelope_layout() -> None:
    snapshot = minimal()
    body = snapshot.to_bytes()
    envelope = sign_snapshot(snapshot, KEY)
    decoded = msgpack.unpackb(envelope, object_pairs_hook=list)
    assert [key for key, _ in decoded] == ["body", "pk", "sig", "v"]
    fields = dict(decoded)
    assert fields == {"body": body, "pk": KEY.public.raw, "sig": KEY.sign(SIGNING_PREFIX + body), "v": 1}
    assert SIGNING_PREFIX == b"liberation-analytics/snapshot/v1\x00"
    assert sign_body(body, KEY) == envelope


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(snapshots(node=NODE), st.sampled_from(["body", "sig"]), st.data())
def test_a_flipped_bit_in_body_or_signature_never_verifies(
    snapshot: Snapshot, region: str, data: st.DataObject
) -> None:
    envelope = sign_snapshot(snapshot, KEY)
    body = snapshot.to_bytes()
    part = body if region == "body" else KEY.sign(SIGNING_PREFIX + body)
    start = envelope.index(part)
    bit = data.draw(st.integers(0, len(part) * 8 - 1), label="bit")
    flipped = bytearray(envelope)
    flipped[start + bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(SignatureError) as caught:
        verify_envelope(bytes(flipped))
    assert caught.value.reason == "bad-signature"


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(snapshots(node=NODE), st.data())
def test_a_flipped_bit_anywhere_in_the_envelope_never_verifies(snapshot: Snapshot, data: st.DataObject) -> None:
    envelope = sign_snapshot(snapshot, KEY)
    bit = data.draw(st.integers(0, len(envelope) * 8 - 1), label="bit")
    flipped = bytearray(envelope)
    flipped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(EnvelopeError):
        verify_envelope(bytes(flipped))


def test_every_single_bit_flip_of_an_envelope_is_rejected() -> None:
    envelope = sign_snapshot(minimal(), KEY)
    for bit in range(len(envelope) * 8):
        flipped = bytearray(envelope)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(EnvelopeError):
            verify_envelope(bytes(flipped))


def test_sign_snapshot_refuses_a_key_of_another_node() -> None:
    with pytest.raises(ValueError, match="key's id"):
        sign_snapshot(minimal(node="0" * 32), KEY)


def test_a_body_naming_another_node_is_a_key_mismatch() -> None:
    envelope = sign_body(minimal(node="0" * 32).to_bytes(), KEY)
    with pytest.raises(SignatureError) as caught:
        verify_envelope(envelope)
    assert caught.value.reason == "key-mismatch"


def test_signature_by_another_key_fails() -> None:
    other = SigningKey.from_seed(bytes(32))
    body = minimal().to_bytes()
    forged = encode_canonical({"body": body, "pk": KEY.public.raw, "sig": other.sign(SIGNING_PREFIX + body), "v": 1})
    assert _reason(lambda: verify_envelope(forged)) == "bad-signature"


def test_signature_without_the_prefix_fails() -> None:
    body = minimal().to_bytes()
    envelope = encode_canonical({"body": body, "pk": KEY.public.raw, "sig": KEY.sign(body), "v": 1})
    assert _reason(lambda: verify_envelope(envelope)) == "bad-signature"


def test_a_non_canonical_body_is_rejected_after_its_signature() -> None:
    body = minimal().to_bytes().replace(b"\xa3seq\x01", b"\xa3seq\xcd\x00\x01")
    with pytest.raises(DecodeError) as caught:
        verify_envelope(sign_body(body, KEY))
    assert caught.value.reason == "not-canonical"


def _envelope(**changes: Any) -> bytes:
    body = minimal().to_bytes()
    fields: dict[str, Any] = {"body": body, "pk": KEY.public.raw, "sig": KEY.sign(SIGNING_PREFIX + body), "v": 1}
    for name, value in changes.items():
        if value is _DELETE:
            del fields[name]
        else:
            fields[name] = value
    return encode_canonical(fields)


@pytest.mark.parametrize(
    "envelope, reason",
    [
        pytest.param(encode_canonical([1, 2]), "shape", id="not-a-map"),
        pytest.param(_envelope(sig=_DELETE), "shape", id="missing-sig"),
        pytest.param(_envelope(extra=b""), "shape", id="extra-key"),
        pytest.param(_envelope(v=2), "unsupported-version", id="v2"),
        pytest.param(_envelope(v=0), "unsupported-version", id="v0"),
        pytest.param(_envelope(v="1"), "shape", id="v-str"),
        pytest.param(_envelope(v=True), "shape", id="v-bool"),
        pytest.param(_envelope(v=1.0), "shape", id="v-float"),
        pytest.param(_envelope(pk=KEY.public.raw[:31]), "shape", id="pk-31-bytes"),
        pytest.param(_envelope(pk=KEY.public.b64), "shape", id="pk-str"),
        pytest.param(_envelope(sig=bytes(63)), "shape", id="sig-63-bytes"),
        pytest.param(_envelope(body=minimal().to_bytes().hex()), "shape", id="body-str"),
        pytest.param(_envelope(body=[1]), "shape", id="body-array"),
        pytest.param(
            b"\x84\xa2pk" + msgpack.packb(KEY.public.raw) + b"\xa4body" + msgpack.packb(b"x") + b"\xa3sig"
            + msgpack.packb(bytes(64)) + b"\xa1v\x01",
            "not-canonical",
            id="unsorted-envelope",
        ),
    ],
)
def test_envelope_shape_errors(envelope: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        verify_envelope(envelope)
    assert caught.value.reason == reason


def test_verify_respects_max_size() -> None:
    envelope = sign_snapshot(minimal(), KEY)
    assert verify_envelope(envelope, max_size=len(envelope)).snapshot == minimal()
    assert _reason(lambda: verify_envelope(envelope, max_size=len(envelope) - 1)) == "too-large"
    assert MAX_ENVELOPE_SIZE == 8 * 1024 * 1024
    assert _reason(lambda: verify_envelope(b"\x00" * (MAX_ENVELOPE_SIZE + 1))) == "too-large"


def test_one_error_hierarchy() -> None:
    assert issubclass(DecodeError, EnvelopeError)
    assert issubclass(SignatureError, EnvelopeError)
    assert issubclass(EnvelopeError, LiberationError)


@given(st.binary(max_size=300))
def test_verify_raises_only_envelope_errors(data: bytes) -> None:
    with pytest.raises(EnvelopeError):
        verify_envelope(data)


# --- the envelope's fixed layout (review H2) ---------------------------------


class _Refused(Exception):
    """Raised by a key policy that knows no key: shows the policy ran, and nothing after it."""


def _refuse(public_key: PublicKey) -> None:
    raise _Refused


def _empty_maps(size: int) -> bytes:
    """An array32 of `size - 5` empty maps: no key, no signature, one Python dict each for a generic decoder."""
    return b"\xdd" + struct.pack(">I", size - 5) + b"\x80" * (size - 5)


def test_regression_unauthenticated_empty_maps_are_refused_without_decoding() -> None:
    """Review H2: 8 MiB of empty maps cost about 11 s of CPU and +660 MiB before the key was even looked at."""
    data = _empty_maps(MAX_ENVELOPE_SIZE)
    started = time.process_time()
    with pytest.raises(DecodeError) as caught:
        verify_envelope(data, check_key=_refuse)
    assert time.process_time() - started < 0.05
    assert caught.value.reason == "shape" and not caught.value.in_body


def test_regression_an_unknown_key_is_refused_before_its_body_is_read() -> None:
    """A valid layout with 8 MiB of empty maps in its body: the key policy answers, the body is never decoded."""
    stranger = SigningKey.from_seed(bytes(32))
    body = _empty_maps(MAX_ENVELOPE_SIZE - 200)
    data = encode_canonical({"body": body, "pk": stranger.public.raw, "sig": bytes(64), "v": 1})
    assert len(data) <= MAX_ENVELOPE_SIZE
    started = time.process_time()
    with pytest.raises(_Refused):
        verify_envelope(data, check_key=_refuse)
    assert time.process_time() - started < 0.05
    # Enrolled but with a wrong signature: refused by (5), still before the body is decoded.
    started = time.process_time()
    with pytest.raises(SignatureError):
        verify_envelope(data, check_key=lambda key: None)
    assert time.process_time() - started < 0.5  # SHA-512 over 8 MiB


def test_verification_steps_run_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """(1)-(3) read headers only, (4) the caller's policy, (5) signature, and only then (6) the body decode."""
    calls: list[str] = []
    real = Snapshot.from_bytes.__func__  # type: ignore[attr-defined]

    def spy(cls: type[Snapshot], data: bytes, **kwargs: Any) -> Snapshot:
        calls.append("decode")
        return real(cls, data, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(Snapshot, "from_bytes", classmethod(spy))
    envelope = sign_snapshot(minimal(), KEY)
    assert verify_envelope(envelope, check_key=lambda key: calls.append("policy")).snapshot == minimal()
    assert calls == ["policy", "decode"]
    calls.clear()
    tampered = bytearray(envelope)
    tampered[-4] ^= 1  # the signature's last byte (then a1 76 01: "v" = 1)
    with pytest.raises(SignatureError):
        verify_envelope(bytes(tampered), check_key=lambda key: calls.append("policy"))
    assert calls == ["policy"]  # a bad signature never reaches the decoder


def _with(envelope: bytes, old: bytes, new: bytes) -> bytes:
    assert envelope.count(old) == 1
    return envelope.replace(old, new)


_VALID = sign_snapshot(minimal(), KEY)
_BODY = minimal().to_bytes()
_SIG = KEY.sign(SIGNING_PREFIX + _BODY)


@pytest.mark.parametrize(
    "data, reason",
    [
        pytest.param(b"", "malformed", id="empty"),
        pytest.param(b"\xc1", "malformed", id="reserved-byte"),
        pytest.param(_VALID[:-1], "malformed", id="truncated-v"),
        pytest.param(_VALID[:40], "malformed", id="truncated-body"),
        pytest.param(_VALID + b"\x00", "trailing-bytes", id="trailing-byte"),
        pytest.param(b"\xde\x00\x04" + _VALID[1:], "not-canonical", id="map16-of-4"),
        pytest.param(_with(_VALID, b"\xa1v\x01", b"\xa1v\xcc\x01"), "not-canonical", id="v-uint8"),
        pytest.param(_with(_VALID, b"\xa1v\x01", b"\xa1v\xd0\x01"), "not-canonical", id="v-int8"),
        pytest.param(_with(_VALID, b"\xa2pk\xc4\x20", b"\xa2pk\xc5\x00\x20"), "not-canonical", id="pk-bin16"),
        pytest.param(_with(_VALID, b"\xa2pk", b"\xd9\x02pk"), "not-canonical", id="key-str8"),
        pytest.param(_with(_VALID, b"\xa3sig", b"\xa3aaa"), "not-canonical", id="unknown-key-unsorted"),
        pytest.param(_with(_VALID, b"\xa3sig", b"\xa3sih"), "shape", id="unknown-key-sorted"),
        pytest.param(_with(_VALID, b"\xa3sig", b"\xa2pk"), "duplicate-key", id="duplicate-key"),
        pytest.param(_with(_VALID, b"\xa3sig", b"\x03sig"[:1] + b"\xa0"), "non-str-key", id="int-key"),
        pytest.param(_with(_VALID, b"\xa1v\x01", b"\xa1v\xd4\x00\x01"), "unsupported-type", id="v-ext"),
        pytest.param(_with(_VALID, b"\xa1v\x01", b"\xa1v\x81\xa1v\x01"), "shape", id="v-map"),
        pytest.param(_with(_VALID, b"\xa1v\x01", b"\xa1v\xcb" + struct.pack(">d", 1.0)), "shape", id="v-float64"),
        pytest.param(_with(_VALID, b"\xa1v\x01", b"\xa1v\xc0"), "shape", id="v-nil"),
        pytest.param(
            _with(_VALID, b"\xa1v\x01", b"\xa1v\xcf" + (2**64 - 1).to_bytes(8, "big")), "unsupported-version", id="v-max"
        ),
        pytest.param(_with(_VALID, b"\xa1v\x01", b"\xa1v\xff"), "unsupported-version", id="v-minus-1"),
        pytest.param(b"\x84" + b"\xa1a\x01" * 4, "duplicate-key", id="four-same-keys"),
        pytest.param(b"\x8f" + b"\xa1a\x01" * 15, "shape", id="fixmap-15"),
        pytest.param(b"\x80", "shape", id="empty-map"),
        pytest.param(_empty_maps(1 << 20), "shape", id="array32-of-empty-maps"),
    ],
)
def test_the_envelope_layout_is_read_header_by_header(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        verify_envelope(data, check_key=_refuse)
    assert caught.value.reason == reason
    assert not caught.value.in_body


def test_envelope_from_bytes_reads_without_verifying() -> None:
    envelope = Envelope.from_bytes(_VALID)
    assert (envelope.public_key, envelope.body, envelope.signature, envelope.data) == (KEY.public, _BODY, _SIG, _VALID)
    assert envelope.verify().snapshot == minimal()
    for size in (255, 256, 65_535, 65_536):  # every bin header width of the body
        body = b"\x00" * size
        parsed = Envelope.from_bytes(sign_body(body, KEY))
        assert parsed.body == body
        with pytest.raises(DecodeError) as caught:
            parsed.verify()
        assert caught.value.in_body


def _oracle(data: bytes) -> tuple[bytes, bytes, bytes] | None:
    """The envelope fields as the generic canonical decoder (the old path) reads them, or None if it refuses."""
    try:
        obj = decode_canonical(data, BIG)
    except DecodeError:
        return None
    if type(obj) is not dict or obj.keys() != {"body", "pk", "sig", "v"}:
        return None
    body, pk, sig, v = obj["body"], obj["pk"], obj["sig"], obj["v"]
    if type(v) is not int or v != 1 or type(body) is not bytes:
        return None
    if type(pk) is not bytes or len(pk) != 32 or type(sig) is not bytes or len(sig) != 64:
        return None
    return body, pk, sig


_SCALARS = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8) | st.binary(max_size=80)
)
_ENVELOPE_LIKE = st.fixed_dictionaries(
    {},
    optional={
        "body": st.binary(max_size=300) | _SCALARS,
        "pk": st.binary(min_size=31, max_size=33) | _SCALARS,
        "sig": st.binary(min_size=63, max_size=65) | _SCALARS,
        "v": st.integers(-2, 2) | _SCALARS,
        "x": _SCALARS | st.lists(_SCALARS, max_size=3),
    },
).map(encode_canonical)


def _mutated(data: bytes) -> st.SearchStrategy[bytes]:
    n = len(data)
    return st.one_of(
        st.tuples(st.integers(0, n - 1), st.integers(0, 255)).map(lambda a: data[: a[0]] + bytes([a[1]]) + data[a[0] + 1 :]),
        st.integers(0, n).map(lambda i: data[:i]),
        st.tuples(st.integers(0, n), st.binary(min_size=1, max_size=4)).map(lambda a: data[: a[0]] + a[1] + data[a[0] :]),
    )


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(_ENVELOPE_LIKE | _ENVELOPE_LIKE.flatmap(_mutated) | _mutated(_VALID) | st.binary(max_size=64))
def test_the_layout_reader_accepts_exactly_what_the_generic_decoder_accepts(data: bytes) -> None:
    """The old generic decode is the oracle: same envelopes accepted, same fields, the rest refused."""
    expected = _oracle(data)
    try:
        envelope = Envelope.from_bytes(data)
    except SignatureError:  # an unusable pk: a step (3) refusal of a layout the oracle accepts
        assert expected is not None
        return
    except DecodeError:
        assert expected is None, "the layout reader refused an envelope the generic decoder accepts"
        return
    assert expected == (envelope.body, envelope.public_key.raw, envelope.signature)


def _largest(catalog: Catalog) -> Snapshot:
    """The longest valid snapshot of `catalog`: every cell and `other` published, each integer at its widest."""
    start = (INT64_MAX - 32 * 86_400) // 3600 * 3600
    return Snapshot(
        format=FORMAT, node=NODE, catalog=catalog.hash, window_start=start, window_end=start + 31 * 86_400,
        seq=INT64_MAX, created=INT64_MAX, nodes=INT64_MAX,
        metrics={
            m.name: MetricCells(
                epsilon=math.pi, scale=math.e, variance=1e300, threshold=INT64_MAX,
                idx=list(range(catalog.domain_size(m))), val=[INT64_MIN] * catalog.domain_size(m),
                other_idx=list(range(catalog.prefix_size(m))), other_val=[INT64_MIN] * catalog.prefix_size(m),
            )
            for m in catalog.metrics
        },
    )


def test_max_envelope_size_bounds_every_snapshot_of_a_catalog() -> None:
    default = load_catalog()
    data = load_catalog().model_dump(mode="json")
    long = {m["name"]: f"{m['name']}-".ljust(64, "x") for m in data["metrics"]}
    federation = dict(data["federation"], metrics={long[k]: v for k, v in data["federation"]["metrics"].items()})
    long_names = dict(data, metrics=[dict(m, name=long[m["name"]]) for m in data["metrics"]], federation=federation)
    for catalog in (default, parse_catalog(long_names)):
        envelope = sign_snapshot(_largest(catalog), KEY)
        assert len(envelope) <= max_envelope_size(catalog) < len(envelope) * 1.05  # a bound, and a tight one
