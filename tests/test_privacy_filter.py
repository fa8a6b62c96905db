"""The privacy filter as pure functions: allowlist, banding, geography, sessions, time."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.geo import client_ip, parse_ip, parse_networks
from node.privacy import PrivacyFilter, SessionHasher, session_hash, window_of
from protocol.catalog import load_catalog, parse_catalog
from protocol.events import Event

NOW = datetime(2026, 11, 24, 15, 37, 12, tzinfo=UTC)
SALT = b"s" * 32


def salt_for(window: datetime) -> bytes | None:
    return SALT if window >= window_of(NOW) - timedelta(days=7) else None


def event(**changes: Any) -> Event:
    data: dict[str, Any] = {
        "app": "real-wage-calculator",
        "action": "reveal",
        "attributes": {"salary": 87_000, "industry": "astrology", "real_wage_gap_pct": 23.5},
        "timestamp": NOW.isoformat(),
        "session_id": "sess_abc123",
    }
    data.update(changes)
    return Event.model_validate(data)


@pytest.fixture(scope="module")
def privacy() -> PrivacyFilter:
    return PrivacyFilter(load_catalog(), clock_skew=timedelta(minutes=10))


def test_money_is_banded_and_unknown_categories_become_other(privacy: PrivacyFilter) -> None:
    result = privacy.apply(event(), now=NOW, salt_for=salt_for)
    assert result.event is not None
    assert result.event.attributes == {
        "salary": "75k-100k",
        "industry": "other",
        "real_wage_gap_pct": "20..25",
    }
    assert result.dropped_attributes == 0


def test_undeclared_attributes_are_dropped_and_counted(privacy: PrivacyFilter) -> None:
    attrs = {"salary": 87_000, "email": "a@b.c", "runway_months": 3, "salary_note": "x"}
    result = privacy.apply(event(attributes=attrs), now=NOW, salt_for=salt_for)
    assert result.event is not None
    # runway_months is declared, but not for this app: dropped as well.
    assert result.event.attributes == {"salary": "75k-100k"}
    assert result.dropped_attributes == 3


def test_wrong_typed_values_are_dropped(privacy: PrivacyFilter) -> None:
    result = privacy.apply(
        event(attributes={"salary": "lots", "industry": 3}), now=NOW, salt_for=salt_for
    )
    assert result.event is not None and result.event.attributes == {}
    assert result.dropped_attributes == 2


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"app": "surveillance-tool"}, "undeclared-app"),
        ({"action": "calculate"}, "undeclared-action"),
        ({"timestamp": (NOW - timedelta(hours=1)).isoformat()}, "timestamp-skew"),
        ({"timestamp": (NOW + timedelta(minutes=11)).isoformat()}, "timestamp-skew"),
    ],
)
def test_live_rejections(privacy: PrivacyFilter, changes: dict[str, Any], reason: str) -> None:
    result = privacy.apply(event(**changes), now=NOW, salt_for=salt_for)
    assert result.event is None and result.rejection is not None
    assert result.rejection.reason == reason


def test_server_clock_decides_the_hour_of_live_events(privacy: PrivacyFilter) -> None:
    skewed = NOW - timedelta(minutes=9)  # inside the skew, in the previous hour
    result = privacy.apply(event(timestamp=skewed.isoformat()), now=NOW, salt_for=salt_for)
    assert result.event is not None
    assert result.event.hour == datetime(2026, 11, 24, 15, tzinfo=UTC)
    assert result.event.window == datetime(2026, 11, 24, tzinfo=UTC)
    assert result.event.minute == 15 * 60 + 37


def test_imported_events_keep_their_own_window(privacy: PrivacyFilter) -> None:
    past = NOW - timedelta(days=3, hours=2)
    result = privacy.apply(event(timestamp=past.isoformat()), now=NOW, salt_for=salt_for, live=False)
    assert result.event is not None
    assert result.event.window == window_of(past)
    too_old = NOW - timedelta(days=30)
    late = privacy.apply(event(timestamp=too_old.isoformat()), now=NOW, salt_for=salt_for, live=False)
    assert late.rejection is not None and late.rejection.reason == "window-closed"
    future = NOW + timedelta(days=1)
    ahead = privacy.apply(event(timestamp=future.isoformat()), now=NOW, salt_for=salt_for, live=False)
    assert ahead.rejection is not None and ahead.rejection.reason == "timestamp-future"


def test_geography_prefers_a_valid_hint(privacy: PrivacyFilter) -> None:
    hinted = privacy.apply(event(geo_hint="fr"), now=NOW, salt_for=salt_for, client_country="DE")
    assert hinted.event is not None and hinted.event.country == "FR"
    bad_hint = privacy.apply(event(geo_hint="Narnia"), now=NOW, salt_for=salt_for, client_country="DE")
    assert bad_hint.event is not None and bad_hint.event.country == "DE"
    unknown = privacy.apply(event(), now=NOW, salt_for=salt_for)
    assert unknown.event is not None and unknown.event.country == "ZZ"


@settings(max_examples=300, deadline=None, database=None)
@given(st.binary(min_size=1, max_size=130), st.binary(max_size=140))
def test_the_keyed_hasher_is_hmac_sha256(salt: bytes, key: bytes) -> None:
    """The fast keyed states give exactly `session_hash` (hmac.new), short salts, block-sized and long ones alike."""
    assert SessionHasher(salt)(key) == session_hash(salt, key)


def test_session_hash_depends_on_the_windows_salt(privacy: PrivacyFilter) -> None:
    a = session_hash(b"a" * 32, b"sess_abc123")
    assert a == session_hash(b"a" * 32, b"sess_abc123")
    assert a != session_hash(b"b" * 32, b"sess_abc123")
    assert -(2**63) <= a < 2**63
    result = privacy.apply(event(), now=NOW, salt_for=salt_for)
    assert result.event is not None and result.event.session == session_hash(SALT, b"sess_abc123")


def test_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    trusted = parse_networks(("10.0.0.0/8",))
    assert str(client_ip("10.1.2.3", "203.0.113.9, 10.9.9.9", trusted)) == "203.0.113.9"
    assert str(client_ip("198.51.100.1", "203.0.113.9", trusted)) == "198.51.100.1"
    assert str(client_ip("10.1.2.3", "garbage", trusted)) == "10.1.2.3"
    assert str(client_ip("10.1.2.3", None, trusted)) == "10.1.2.3"
    assert str(client_ip("10.1.2.3", "203.0.113.9", ())) == "10.1.2.3"
    assert client_ip(None, "203.0.113.9", trusted) is None


def test_an_ipv4_mapped_address_is_the_ipv4_client() -> None:
    """A dual-stack socket reports ::ffff:a.b.c.d: the client (for geo and rate limit) is a.b.c.d."""
    trusted = parse_networks(("10.0.0.0/8",))
    assert client_ip("::ffff:203.0.113.9", None, ()) == ipaddress.IPv4Address("203.0.113.9")
    assert client_ip("::ffff:10.1.2.3", "::ffff:203.0.113.9", trusted) == ipaddress.IPv4Address("203.0.113.9")
    assert client_ip("2001:db8::1", None, ()) == ipaddress.IPv6Address("2001:db8::1")


def _parsed(parse: Any, text: str) -> tuple[str, Any]:
    try:
        address = parse(text)
    except ValueError:
        return ("ValueError", None)
    return (type(address).__name__, address)


ADDRESS_FORMS = [
    "127.0.0.1", "0.0.0.0", "255.255.255.255", "203.0.113.9", "01.2.3.4", "1.2.3", "1.2.3.4.5", "256.1.1.1",
    " 1.2.3.4", "1.2.3.4 ", "1.2.3.4\x00", "0x7f.0.0.1", "127.1", "", "::", "::1", "2001:db8::1", "2001:DB8:0:0:0:0:0:1",
    "::ffff:192.0.2.1", "::192.0.2.1", "fe80::1%eth0", "fe80::1%", "2001:db8:::1", "1:2:3:4:5:6:7:8:9", "garbage",
]


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.sampled_from(ADDRESS_FORMS), st.text(alphabet="0123456789abcdefABCDEF:.%x ", max_size=45)))
def test_the_fast_address_parse_gives_what_ipaddress_gives(text: str) -> None:
    # Every ingest request parses its peer with parse_ip: any difference from the
    # standard library would change rate-limit buckets, countries and Plausible sessions.
    assert _parsed(parse_ip, text) == _parsed(ipaddress.ip_address, text)


@pytest.mark.parametrize("window", ["day", "week"])
def test_batch_filter_equals_one_by_one(window: str) -> None:
    catalog = parse_catalog({**load_catalog().model_dump(mode="json"), "window": window})
    privacy = PrivacyFilter(catalog, clock_skew=timedelta(minutes=10))
    events = [
        event(session_id=f"sess_batch_{i:03d}", geo_hint=["DE", None, "Narnia"][i % 3],
              app=["real-wage-calculator", "runway-calculator", "tracker"][i % 7 % 3],
              action=["reveal", "calculate", "start"][i % 7 % 3],
              attributes={"salary": 1000 * i, "industry": ["tech", "x"][i % 2], "junk": i})
        for i in range(60)
    ]
    keys = [f"key-{i}".encode() for i in range(60)]
    batch, dropped = privacy.apply_many(events, now=NOW, salt_for=salt_for, session_keys=keys, client_country="KE")
    one_by_one = [
        privacy.apply(e, now=NOW, salt_for=salt_for, session_key=k, client_country="KE")
        for e, k in zip(events, keys, strict=False)
    ]
    assert batch == [r.event if r.event is not None else r.rejection for r in one_by_one]
    assert dropped == sum(r.dropped_attributes for r in one_by_one if r.event is not None)
    closed, _ = privacy.apply_many(events[:3], now=NOW, salt_for=lambda w: None)
    assert all(getattr(r, "reason", None) in {"window-closed", "undeclared-app"} for r in closed)


def test_a_kept_slot_follows_the_minute_and_the_salt(privacy: PrivacyFilter) -> None:
    now = datetime(2026, 11, 24, 13, 7, 30, tzinfo=UTC)
    salts: dict[datetime, bytes | None] = {window_of(now): b"a" * 32}
    first = privacy.slot(now, salts.get)
    assert privacy.slot(now + timedelta(seconds=20), salts.get) is first  # same minute, same salt
    later = privacy.slot(now + timedelta(minutes=1), salts.get)
    assert (later.minute, later.hour) == (first.minute + 1, first.hour)
    assert later.hasher is not None and later.hasher(b"s") == session_hash(b"a" * 32, b"s")
    salts[window_of(now)] = None  # the window was exported: its salt is gone
    assert privacy.slot(now + timedelta(minutes=1), salts.get).hasher is None
    salts[window_of(now)] = b"b" * 32
    renewed = privacy.slot(now + timedelta(minutes=1), salts.get).hasher
    assert renewed is not None and renewed(b"s") == session_hash(b"b" * 32, b"s")
