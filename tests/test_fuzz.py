"""Fuzzing the pure cores with hypothesis: the wire decoder, the privacy filter, the ingest body decoder.

Inputs are structure-aware (values msgpack and JSON can carry, event-shaped
maps, valid snapshots and envelopes) and mutation-based (bit flips,
truncations, insertions, deletions and splices of valid bytes, and hostile
bodies signed with a real key, so they get past the signature into the
snapshot decoder). Each target states what may escape:

    wire      decode_canonical, verify_envelope, Snapshot.from_bytes: EnvelopeError only;
              what decodes re-encodes to the same bytes
    privacy   PrivacyFilter.apply on any valid Event: never raises; what it keeps lies inside
              the catalog's domains (app, action, the app's own attributes, their labels,
              the country domain, the window's hours); apply_many agrees with apply
    ingest    decode_body, then the batch and per-event validation: Problem only

`python -m bench fuzz` runs the same targets tens of thousands of times.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from functools import cache
from typing import Any

import msgpack
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from node.ingest import (
    JSON_TYPES,
    MSGPACK_TYPES,
    _items,
    decode_body,
    validate_all,
    validate_each,
)
from node.privacy import FilteredEvent, PrivacyFilter, Rejection
from protocol.catalog import Catalog, load_catalog, parse_catalog
from protocol.codec import EnvelopeError, decode_canonical, encode_canonical
from protocol.countries import COUNTRY_DOMAIN, ISO_CODES
from protocol.envelope import sign_body, verify_envelope
from protocol.errors import Problem
from protocol.events import MAX_ATTRIBUTES, SLUG_PATTERN, Event
from protocol.keys import SigningKey
from protocol.snapshot import Snapshot
from protocol.windows import DAY, WEEK, is_window_start
from tests.snapshots import node_snapshot

CATALOG = load_catalog()


@cache
def _with_window(seconds: int) -> Catalog:
    """The default catalog with daily or weekly windows."""
    return CATALOG if seconds == CATALOG.window_seconds else parse_catalog(
        {**CATALOG.model_dump(mode="json"), "window": "week" if seconds == WEEK else "day"}
    )


EXAMPLES = 300  # per target in `make test`; bench/bench_fuzz.py runs many more
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)


# ---- mutations of valid bytes --------------------------------------------------------------


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def mutations(valid: bytes) -> st.SearchStrategy[bytes]:
    """What a fuzzer does to a seed: flip bits, overwrite, truncate, insert, delete, duplicate a span."""
    n = len(valid)
    at = st.integers(min_value=0, max_value=n)
    return st.one_of(
        st.lists(st.integers(0, 8 * n - 1), min_size=1, max_size=6).map(lambda bits: _flips(valid, bits)),
        st.tuples(st.integers(0, n - 1), st.integers(0, 255)).map(lambda a: valid[: a[0]] + bytes([a[1]]) + valid[a[0] + 1:]),
        at.map(lambda i: valid[:i]),
        st.tuples(at, st.binary(min_size=1, max_size=16)).map(lambda a: valid[: a[0]] + a[1] + valid[a[0]:]),
        st.tuples(at, st.integers(1, 64)).map(lambda a: valid[: a[0]] + valid[a[0] + a[1]:]),
        st.tuples(at, at).map(lambda a: valid[: max(a)] + valid[min(a): max(a)] + valid[max(a):]),
    )


def _flips(data: bytes, bits: list[int]) -> bytes:
    for bit in bits:
        data = _flip(data, bit)
    return data


# ---- wire -----------------------------------------------------------------------------------

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | TEXT
    | st.binary(max_size=40)
)
MSGPACK_VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(TEXT | st.integers(-5, 5), inner, max_size=5),
    max_leaves=20,
)
"""Anything msgpack-python packs, canonical or not: NaN, non-str keys, unsorted maps."""


def _pack_loosely(value: Any, single_float: bool) -> bytes:
    try:
        return bytes(msgpack.packb(value, use_bin_type=True, use_single_float=single_float))
    except OverflowError:  # a float64 past float32's range
        return bytes(msgpack.packb(value, use_bin_type=True))


def _canonical_or_none(value: Any) -> bytes | None:
    try:
        return encode_canonical(value)
    except (TypeError, ValueError):
        return None


@cache
def _signer() -> SigningKey:
    return SigningKey.generate()


@cache
def _seeds() -> tuple[bytes, bytes]:
    """A valid snapshot body and its envelope, signed by `_signer()`."""
    body = node_snapshot(_signer(), 20_000 * DAY, seed=3).to_bytes()
    return body, sign_body(body, _signer())


def wire_inputs() -> st.SearchStrategy[bytes]:
    body, envelope = _seeds()
    packed = st.builds(_pack_loosely, MSGPACK_VALUES, st.booleans())
    canonical = MSGPACK_VALUES.map(_canonical_or_none).filter(lambda b: b is not None)
    signed_hostile = st.one_of(mutations(body), packed, st.binary(max_size=200)).map(lambda b: sign_body(b, _signer()))
    return st.one_of(
        st.binary(max_size=300),
        packed,
        canonical,  # type: ignore[arg-type]
        mutations(body),
        mutations(envelope),
        signed_hostile,
        canonical.flatmap(mutations),  # type: ignore[arg-type]
    )


def check_wire(data: bytes) -> None:
    """Each decoder accepts or raises EnvelopeError; nothing else escapes."""
    try:
        decoded = decode_canonical(data, 1 << 20)
    except EnvelopeError:
        pass
    else:
        assert encode_canonical(decoded) == data, "decoded bytes do not re-encode to themselves"
    try:
        verified = verify_envelope(data)
    except EnvelopeError:
        pass
    else:
        assert verified.snapshot.to_bytes() == verified.body
    try:
        snapshot = Snapshot.from_bytes(data)
    except EnvelopeError:
        pass
    else:
        assert snapshot.to_bytes() == data


# ---- privacy filter -------------------------------------------------------------------------

SLUGS = st.from_regex(SLUG_PATTERN, fullmatch=True)
ALL_ACTIONS = sorted({a for spec in CATALOG.apps.values() for a in spec.actions})
ATTRIBUTE_NAMES = sorted(CATALOG.attributes)
LABELS = sorted({label for spec in CATALOG.attributes.values() for label in spec.domain})
NOW = datetime(2026, 11, 24, 13, 37, 11, tzinfo=UTC)

OFFSETS = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
TIMESTAMPS = st.one_of(
    st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30), timezones=OFFSETS),
    st.integers(-3600, 3600).map(lambda s: NOW + timedelta(seconds=s)),  # near the clock: the filter lets these in
)
ATTRIBUTE_VALUES = st.one_of(
    st.sampled_from(LABELS),
    st.text(max_size=128),
    st.booleans(),
    st.integers(),  # any size: JSON can carry 10**400
    st.floats(allow_nan=False, allow_infinity=False),
)


@st.composite
def events(draw: st.DrawFn) -> Event:
    """Valid Events: declared and undeclared apps, actions and attributes, any values and times."""
    app = draw(st.sampled_from(sorted(CATALOG.apps)) | SLUGS)
    declared = CATALOG.apps.get(app)
    action = draw(
        st.sampled_from(sorted(declared.actions)) if declared and draw(st.booleans()) else st.sampled_from(ALL_ACTIONS) | SLUGS
    )
    names = st.sampled_from(ATTRIBUTE_NAMES) | SLUGS
    attributes = draw(st.dictionaries(names, ATTRIBUTE_VALUES, max_size=MAX_ATTRIBUTES))
    return Event.model_validate({
        "app": app,
        "action": action,
        "attributes": attributes,
        "timestamp": draw(TIMESTAMPS).isoformat(),
        "geo_hint": draw(st.none() | st.sampled_from(ISO_CODES).map(str.lower) | st.text(max_size=64)),
        "session_id": draw(st.text(string.printable[:94], min_size=8, max_size=128)),
    })


@dataclass(frozen=True)
class FilterCase:
    events: list[Event]
    now: datetime
    window_seconds: int
    live: bool
    salt: bytes | None
    client_country: str | None


FILTER_CASES = st.builds(
    FilterCase,
    events=st.lists(events(), min_size=1, max_size=4),
    now=st.just(NOW) | st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
    window_seconds=st.sampled_from([DAY, WEEK]),
    live=st.booleans(),
    salt=st.none() | st.binary(min_size=32, max_size=32),
    client_country=st.none() | st.sampled_from(COUNTRY_DOMAIN),
)


def _check_kept(event: Event, kept: FilteredEvent, dropped: int, window_seconds: int) -> None:
    app = CATALOG.apps[kept.app]
    assert (kept.app, kept.action) == (event.app, event.action) and kept.action in app.actions
    assert set(kept.attributes) <= set(app.attributes), "an attribute the app does not declare was kept"
    for name, label in kept.attributes.items():
        assert label in CATALOG.attributes[name].domain, f"{name}: {label!r} is outside its domain"
    assert len(kept.attributes) + dropped == len(event.attributes)
    assert kept.country in COUNTRY_DOMAIN
    start = int(kept.window.timestamp())
    assert is_window_start(start, window_seconds) and kept.hour.minute == kept.hour.second == kept.hour.microsecond == 0
    assert kept.window <= kept.hour < kept.window + timedelta(seconds=window_seconds)
    assert 0 <= kept.minute < window_seconds // 60
    assert -(2**63) <= kept.session < 2**63


def check_privacy(case: FilterCase) -> None:
    """The filter never raises, and whatever it keeps is inside the catalog's public domains."""
    privacy = PrivacyFilter(_with_window(case.window_seconds), clock_skew=timedelta(minutes=10))
    salt_for: Callable[[datetime], bytes | None] = lambda window: case.salt  # noqa: E731
    singles = []
    for event in case.events:
        result = privacy.apply(event, now=case.now, salt_for=salt_for, client_country=case.client_country, live=case.live)
        if result.event is None:
            assert result.rejection is not None and result.rejection.field and result.rejection.reason
            assert result.dropped_attributes == 0
        else:
            assert result.rejection is None
            _check_kept(event, result.event, result.dropped_attributes, case.window_seconds)
        if case.live:
            singles.append(result)
    if case.live:
        outcomes, dropped = privacy.apply_many(case.events, now=case.now, salt_for=salt_for, client_country=case.client_country)
        assert outcomes == [r.event if r.event is not None else r.rejection for r in singles]
        assert dropped == sum(r.dropped_attributes for r in singles if r.event is not None)
        assert all(isinstance(o, FilteredEvent | Rejection) for o in outcomes)


# ---- ingest bodies --------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(TEXT, inner, max_size=5),
    max_leaves=20,
)
EVENT_FIELDS = {
    "app": SLUGS | JSON_VALUES,
    "action": SLUGS | JSON_VALUES,
    "attributes": st.dictionaries(SLUGS | TEXT, JSON_VALUES, max_size=6) | JSON_VALUES,
    "timestamp": TIMESTAMPS.map(datetime.isoformat) | JSON_VALUES,
    "geo_hint": JSON_VALUES,
    "session_id": st.text(string.printable[:94], min_size=8, max_size=20) | JSON_VALUES,
    "extra": JSON_VALUES,
}
EVENT_LIKE = st.fixed_dictionaries({}, optional=EVENT_FIELDS)
BODY_VALUES = st.one_of(
    EVENT_LIKE,
    st.lists(EVENT_LIKE, max_size=5),
    st.fixed_dictionaries({"events": st.lists(EVENT_LIKE, max_size=5) | JSON_VALUES}),
    JSON_VALUES,
)


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()  # NaN and Infinity included: Python's json reads them back


def _msgpack_bytes(value: Any) -> bytes:
    try:
        return bytes(msgpack.packb(value, use_bin_type=True))
    except (OverflowError, ValueError, TypeError):
        return b"\xc1"


VALID_BATCH = json.dumps([
    {"app": "runway-calculator", "action": "calculate", "attributes": {"runway_months": 8.5, "industry": "tech"},
     "timestamp": NOW.isoformat(), "session_id": "sess_abc123"},
    {"app": "real-wage-calculator", "action": "reveal", "attributes": {"salary": 87000},
     "timestamp": NOW.isoformat(), "session_id": "sess_def456", "geo_hint": "de"},
]).encode()

INGEST_BODIES = st.tuples(
    st.sampled_from(sorted(JSON_TYPES | MSGPACK_TYPES)) | st.text(max_size=30),
    st.one_of(
        st.binary(max_size=300),
        BODY_VALUES.map(_json_bytes),
        BODY_VALUES.map(_msgpack_bytes),
        mutations(VALID_BATCH),
        st.integers(1, 3000).flatmap(lambda n: st.sampled_from([b"[" * n, b'{"a":' * n, b"\x91" * n + b"\xc0"])),
    ),
)


def check_ingest(case: tuple[str, bytes]) -> None:
    """Decoding and validating a body raises only Problems (4xx), whatever the bytes."""
    content_type, body = case
    try:
        items, _ = _items(decode_body(body, content_type))
    except Problem:
        return
    try:
        valid = validate_all(items)
    except Problem:
        pass
    else:
        assert len(valid) == len(items) and all(isinstance(e, Event) for e in valid)
    try:
        each = validate_each(items)
    except Problem:
        pass
    else:
        assert len(each) == len(items)


TARGETS: dict[str, tuple[st.SearchStrategy[Any], Callable[[Any], None]]] = {
    "wire": (wire_inputs(), check_wire),
    "privacy": (FILTER_CASES, check_privacy),
    "ingest": (INGEST_BODIES, check_ingest),
}
"""Name -> (inputs, property): what `python -m bench fuzz` runs at length."""


# ---- the tests ------------------------------------------------------------------------------


@FUZZ
@given(wire_inputs())
@example(b"\x91" * 5000 + b"\xc0")  # nesting deeper than msgpack's stack
@example(b"\xcb" + b"\x7f\xf8" + b"\x00" * 6)  # NaN
def test_wire_decoders_raise_only_envelope_errors(data: bytes) -> None:
    check_wire(data)


@FUZZ
@given(FILTER_CASES)
def test_privacy_filter_keeps_only_catalog_values(case: FilterCase) -> None:
    check_privacy(case)


@FUZZ
@given(INGEST_BODIES)
@example(("application/json", b"[" * 100_000))  # deeper than Python's recursion limit
@example(("application/json", b'{"events": ' + b"[" * 100_000))
@example(("application/msgpack", b"\x91" * 100_000 + b"\xc0"))
def test_ingest_bodies_raise_only_problems(case: tuple[str, bytes]) -> None:
    check_ingest(case)


def test_mutations_reach_past_the_signature() -> None:
    """The signed-hostile inputs do get to the snapshot decoder (in_body errors), not just the envelope's."""
    body, _ = _seeds()
    seen_in_body = 0
    for cut in range(10, len(body), max(1, len(body) // 50)):
        try:
            verify_envelope(sign_body(body[:cut], _signer()))
        except EnvelopeError as exc:
            seen_in_body += exc.in_body
    assert seen_in_body > 10
