"""The fast path (node/fastfilter.py) against the exact one (pydantic Event, PrivacyFilter.apply_many, RowLayout).

The fast path may give up on any batch (None: the exact path decides), but
whatever it accepts the exact path accepts too, with the same rows and the
same count of dropped attributes. Generated batches are mostly near-valid
events with one or two faults planted, so both outcomes are exercised; they
run under the default catalog and under a generated one (other names, kinds,
negative and fractional edges), since both paths share one rule set.
"""

from __future__ import annotations

import hashlib
import random
import string
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from importlib import resources
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from node.fastfilter import FastFilter
from node.privacy import FilteredEvent, PrivacyFilter
from node.rows import RowLayout
from protocol.catalog import Catalog, load_catalog, parse_catalog
from protocol.countries import ISO_CODES
from protocol.events import EVENTS_ADAPTER, MAX_BATCH, Event

NOW = datetime(2026, 11, 24, 13, 37, 21, 123456, tzinfo=UTC)
SALT = bytes(range(32))
SKEW = timedelta(minutes=10)
CHECKS = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), database=None)


def generated_catalog(seed: int) -> Catalog:
    """The default catalog's session metrics over generated apps and attributes of every kind."""
    rng = random.Random(seed)
    data = tomllib.loads(resources.files("protocol").joinpath("data/default_catalog.toml").read_text())
    data["metrics"] = [m for m in data["metrics"] if not any(d.startswith("attr:") for d in m["dimensions"])]
    kept = {m["name"]: data["federation"]["metrics"][m["name"]] for m in data["metrics"]}  # the rounds' metrics too
    data["federation"]["metrics"] = {name: share / sum(kept.values()) for name, share in kept.items()}
    word = lambda: "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9)))  # noqa: E731
    attributes: dict[str, dict[str, Any]] = {}
    for i, kind in enumerate(["number", "money", "band", "category", "category", "number", "band"]):
        spec: dict[str, Any] = {"kind": kind}
        if kind in ("number", "money"):
            start = rng.choice([-1000.5, -3, 0, 0.25, 7])
            steps = sorted({round(rng.uniform(0.1, 500), 2) for _ in range(rng.randint(1, 9))})
            spec["edges"] = [start] + [start + sum(steps[: j + 1]) for j in range(len(steps))]
        elif kind == "band":
            spec["labels"] = sorted({f"{word()}-{j}" for j in range(rng.randint(1, 6))})
        else:
            values = sorted({word() for _ in range(rng.randint(1, 8))})
            spec["values"] = values + (["other"] if i % 2 else [])
        attributes[f"g{i}_{word()}"] = spec
    names = list(attributes)
    apps: dict[str, dict[str, Any]] = {}
    for i in range(4):
        actions = ["start", "complete", *sorted({word() for _ in range(rng.randint(0, 4))} - {"start", "complete"})]
        apps[f"tool-{i}-{word()}"] = {"actions": actions, "attributes": rng.sample(names, rng.randint(0, len(names)))}
    data["apps"], data["attributes"], data["name"] = apps, attributes, "generated"
    return parse_catalog(data)


@dataclass(frozen=True)
class Paths:
    """The exact and the fast path of one catalog."""

    catalog: Catalog
    privacy: PrivacyFilter
    layout: RowLayout
    fast: FastFilter

    @classmethod
    def of(cls, catalog: Catalog) -> Paths:
        privacy = PrivacyFilter(catalog, clock_skew=SKEW)
        layout = RowLayout(catalog)
        return cls(catalog, privacy, layout, FastFilter(privacy, layout))


DEFAULT = Paths.of(load_catalog())
GENERATED = Paths.of(generated_catalog(7))
CATALOG, PRIVACY, LAYOUT, FAST = DEFAULT.catalog, DEFAULT.privacy, DEFAULT.layout, DEFAULT.fast


def exact(items: list[Any], client_country: str | None = "KE", paths: Paths = DEFAULT) -> tuple[pa.Table, int] | None:
    """What the exact path stores of a batch, or None when it refuses any event."""
    try:
        events = EVENTS_ADAPTER.validate_python(items)
    except ValidationError:
        return None
    outcomes, dropped = paths.privacy.apply_many(events, now=NOW, salt_for=lambda w: SALT, client_country=client_country)
    kept = [o for o in outcomes if isinstance(o, FilteredEvent)]
    if len(kept) != len(outcomes):
        return None
    return paths.layout.table([paths.layout.block(kept)]), dropped


def fast(items: list[Any], client_country: str | None = "KE", paths: Paths = DEFAULT) -> tuple[pa.Table, int] | None:
    result = paths.fast.run(items, now=NOW, salt_for=lambda w: SALT, client_country=lambda: client_country)
    if result is None:
        return None
    block, dropped = result
    return paths.layout.table([block]), dropped


def agree(items: list[Any], client_country: str | None = "KE", paths: Paths = DEFAULT) -> bool:
    """Assert the fast path accepts nothing the exact one refuses, and stores the same; True if it accepted."""
    got = fast(items, client_country, paths)
    if got is None:
        return False
    want = exact(items, client_country, paths)
    assert want is not None, f"fast path accepted a batch the exact path refuses: {items!r}"
    assert got[0].schema.equals(want[0].schema)
    assert got[0].to_pylist() == want[0].to_pylist()
    assert got[1] == want[1]
    return True


# ---- generated events ---------------------------------------------------------------------

def mostly(valid: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`valid` 24 times in 25: most events stay valid, so both paths get exercised."""
    return st.integers(0, 24).flatmap(lambda k: valid if k else odd)


ODD = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=140)
    | st.lists(st.integers(), max_size=2)
)


def _value(spec: Any) -> st.SearchStrategy[Any]:
    if spec.edges is not None:
        lo, hi = spec.edges[0], spec.edges[-1]
        return mostly(st.integers(int(lo) - 10, int(hi) * 2 + 10) | st.floats(lo - 10, hi * 2 + 10), ODD)
    choices = list(spec.labels or spec.values or ())
    return mostly(st.sampled_from(choices) | st.sampled_from([c.upper() for c in choices]), ODD)


def _stamp(offset: float, style: int) -> Any:
    moment = NOW + timedelta(seconds=offset)
    if style == 0:
        return moment.isoformat().replace("+00:00", "Z")
    if style == 1:
        return moment.isoformat()
    if style == 2:
        return moment.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat()
    if style == 3:
        return moment.astimezone(timezone(timedelta(hours=-8))).isoformat(timespec="milliseconds")
    if style == 4:
        return moment.replace(tzinfo=None).isoformat()  # no zone: refused
    if style == 5:
        return moment.isoformat(sep=" ").replace("+00:00", "Z")
    if style == 6:
        return moment.isoformat().replace("+00:00", "z")
    if style == 7:
        return moment.timestamp()  # a number: refused
    return moment.strftime("%Y%m%dT%H%M%SZ")


STAMPS = mostly(
    st.builds(_stamp, st.floats(-599, 599), st.integers(0, 3)),
    st.builds(_stamp, st.floats(-900, 900) | st.sampled_from([-600.0, 600.0]), st.integers(0, 8)),
)
SESSIONS = mostly(
    st.text(string.printable[:94], min_size=8, max_size=24),
    st.text(string.printable, min_size=6, max_size=24)
    | st.sampled_from(["abcdefgh\n", "short", "x" * 129, "ünïcödé-session"])
    | ODD,
)
GEO = mostly(st.sampled_from(ISO_CODES[:8]) | st.sampled_from(["de", "Fr", "ZZ", "XX", ""]), st.just("a" * 65) | ODD)


@st.composite
def events(draw: st.DrawFn, catalog: Catalog, stamps: st.SearchStrategy[Any] = STAMPS) -> Any:
    app_name = draw(st.sampled_from(sorted(catalog.apps)))
    app = catalog.apps[app_name]
    attributes: dict[Any, Any] = {}
    for name in draw(st.lists(st.sampled_from(app.attributes), unique=True)) if app.attributes else []:
        attributes[name] = draw(_value(catalog.attributes[name]))
    extra_names = mostly(
        st.sampled_from(sorted(catalog.attributes)) | st.just("other_thing"), st.sampled_from(["Bad", "a b", "ok\n", "-x"])
    )
    for name in draw(st.lists(extra_names, max_size=2)):
        attributes.setdefault(name, draw(_value(catalog.attributes[name]) if name in catalog.attributes else ODD))
    event: dict[str, Any] = {
        "app": draw(mostly(st.just(app_name), st.sampled_from(["nope", app_name.upper()]) | ODD)),
        "action": draw(mostly(st.sampled_from(app.actions), st.just("nope") | ODD)),
        "attributes": attributes,
        "timestamp": draw(stamps),
        "session_id": draw(SESSIONS),
    }
    if draw(st.booleans()):
        event["geo_hint"] = draw(GEO)
    if draw(st.integers(0, 30)) == 0:
        event["extra"] = 1
    if draw(st.integers(0, 30)) == 0:
        del event[draw(st.sampled_from(sorted(event)))]
    if draw(st.integers(0, 30)) == 0:
        event["attributes"] = draw(ODD | st.dictionaries(st.text(max_size=4), ODD, min_size=33, max_size=34))
    return event


@pytest.mark.parametrize("paths", [DEFAULT, GENERATED], ids=["default-catalog", "generated-catalog"])
@CHECKS
@given(data=st.data(), client_country=st.sampled_from(["KE", None]))
def test_generated_batches_agree_with_the_exact_path(paths: Paths, data: st.DataObject, client_country: str | None) -> None:
    items = data.draw(st.lists(events(paths.catalog), min_size=1, max_size=3))
    agree(items, client_country, paths)


def test_the_generated_catalog_takes_the_fast_path_too() -> None:
    """The generated catalog's valid events are accepted by both paths, with every attribute kept."""
    catalog = GENERATED.catalog
    batch = []
    for i, (name, app) in enumerate(sorted(catalog.apps.items())):
        attributes: dict[str, Any] = {}
        for attribute in app.attributes:
            spec = catalog.attributes[attribute]
            attributes[attribute] = spec.edges[-1] + 1 if spec.edges else (spec.labels or spec.values or ("",))[0]
        batch.append(dict(app=name, action=app.actions[-1], attributes=attributes,
                          timestamp="2026-11-24T13:35:00Z", session_id=f"tab-{i:08d}"))
    assert agree(batch, paths=GENERATED)
    assert fast(batch, paths=GENERATED)[1] == 0  # type: ignore[index]


VALID = {
    "app": "runway-calculator",
    "action": "calculate",
    "attributes": {"runway_months": 7.5, "savings_band": "5k-10k", "monthly_expenses": 2100, "industry": "farming"},
    "timestamp": "2026-11-24T13:35:00Z",
    "session_id": "tab-4f1c9a2e",
}


def test_plain_valid_batches_take_the_fast_path() -> None:
    """The common case must be fast: a checker that always gave up would pass everything else here."""
    batch = [dict(VALID, session_id=f"tab-{i:08d}", geo_hint=["DE", "br", None][i % 3]) for i in range(300)]
    batch += [
        {
            "app": "cognitive-debt-assessment",
            "action": "start",
            "timestamp": "2026-11-24T13:40:00.5+02:00".replace("13:40", "15:40"),
            "session_id": "another-session",
            "attributes": {"debt_level": "high", "undeclared": True},
        }
    ]
    assert agree(batch)
    rows, dropped = fast(batch)  # type: ignore[misc]
    assert rows.num_rows == 301 and dropped == 1
    assert set(rows.column("country").to_pylist()) == {"DE", "BR", "KE"}


def test_client_country_is_looked_up_once_and_only_when_needed() -> None:
    calls: list[int] = []

    def lookup() -> str:
        calls.append(1)
        return "KE"

    hinted = [dict(VALID, geo_hint="DE", session_id=f"tab-{i:08d}") for i in range(5)]
    assert FAST.run(hinted, now=NOW, salt_for=lambda w: SALT, client_country=lookup) is not None
    assert calls == []
    assert FAST.run(hinted + [VALID, VALID], now=NOW, salt_for=lambda w: SALT, client_country=lookup) is not None
    assert calls == [1]


@pytest.mark.parametrize(
    "change",
    [
        {"session_id": "abcdefgh\n"},  # `$` would have let the newline through
        {"timestamp": "2026-11-24T13:35:00"},  # no zone
        {"timestamp": "2026-11-24T13:20:00Z"},  # past the skew
        {"timestamp": "２０２６-11-24T13:35:00Z"},  # non-ASCII digits
        {"attributes": {"industry\n": "tech"}},
        {"attributes": {"runway_months": float("nan")}},
        {"attributes": {"industry": "x" * 129}},
        {"geo_hint": "a" * 65},
        {"app": "unknown-tool"},
        {"action": "reveal"},
        {"extra": 1},
    ],
)
def test_faults_leave_the_batch_to_the_exact_path(change: dict[str, Any]) -> None:
    batch = [VALID, dict(VALID, **change)]
    assert fast(batch) is None
    assert exact(batch) is None


def test_a_closed_window_or_an_empty_batch_is_left_to_the_exact_path() -> None:
    assert FAST.run([VALID], now=NOW, salt_for=lambda w: None, client_country=lambda: None) is None
    assert FAST.run([], now=NOW, salt_for=lambda w: SALT, client_country=lambda: None) is None


def test_forms_only_the_exact_path_parses_are_left_to_it() -> None:
    """A space for the `T` is RFC 3339 to pydantic, not to the fast path: the exact path takes such a batch."""
    batch = [dict(VALID, timestamp="2026-11-24 13:35:00Z")]
    assert fast(batch) is None
    assert exact(batch) is not None


# ---- imported history (`run_history`): each event's own time decides ------------------------

def history_salt(window: datetime) -> bytes | None:
    """A salt of its own per window (a new bytes object per call); none for windows older than three weeks (closed)."""
    if window < NOW - timedelta(days=21):
        return None
    return hashlib.sha256(window.isoformat().encode()).digest()


def exact_history(items: list[Any], paths: Paths = DEFAULT) -> tuple[pa.Table, int] | None:
    """What the exact import path stores of a batch (`apply(live=False)`), or None when it refuses any event."""
    kept: list[FilteredEvent] = []
    dropped = 0
    for item in items:
        try:
            event = Event.model_validate(item)
        except ValidationError:
            return None
        result = paths.privacy.apply(event, now=NOW, salt_for=history_salt, live=False)
        if result.event is None:
            return None
        kept.append(result.event)
        dropped += result.dropped_attributes
    return paths.layout.table([paths.layout.block(kept)]), dropped


def fast_history(items: list[Any], paths: Paths = DEFAULT) -> tuple[pa.Table, int] | None:
    result = paths.fast.run_history(items, now=NOW, salt_for=history_salt)
    if result is None:
        return None
    block, dropped = result
    return paths.layout.table([block]), dropped


def agree_history(items: list[Any], paths: Paths = DEFAULT) -> bool:
    """As `agree`, for imported events; True if the fast pass took the batch."""
    got = fast_history(items, paths)
    if got is None:
        return False
    want = exact_history(items, paths)
    assert want is not None, f"fast pass took imported events the exact path refuses: {items!r}"
    assert got[0].to_pylist() == want[0].to_pylist()
    assert got[1] == want[1]
    return True


# Four weeks back (windows closed past three) to past the skew ahead, in every form of `_stamp`.
HISTORY_STAMPS = mostly(
    st.builds(_stamp, st.floats(-28 * 86_400, 599), st.integers(0, 3)),
    st.builds(_stamp, st.floats(-29 * 86_400, 3_600) | st.sampled_from([600.0, 600.001]), st.integers(0, 8)),
)


@pytest.mark.parametrize("paths", [DEFAULT, GENERATED], ids=["default-catalog", "generated-catalog"])
@CHECKS
@given(data=st.data())
def test_generated_history_agrees_with_the_exact_path(paths: Paths, data: st.DataObject) -> None:
    items = data.draw(st.lists(events(paths.catalog, HISTORY_STAMPS), min_size=1, max_size=4))
    agree_history(items, paths)


@pytest.mark.parametrize("window", ["day", "week"])
def test_plain_history_takes_the_fast_path(window: str) -> None:
    """Events over twelve days, in three zones, each in its own window, hour and minute."""
    paths = Paths.of(parse_catalog({**CATALOG.model_dump(mode="json"), "window": window}))
    zones = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
    batch = [
        dict(VALID, session_id=f"tab-{i % 40:08d}", geo_hint=["DE", "br", None][i % 3],
             timestamp=(NOW - timedelta(minutes=17 * i, microseconds=i)).astimezone(zones[i % 3]).isoformat())
        for i in range(MAX_BATCH)
    ]
    assert agree_history(batch, paths)
    rows = fast_history(batch, paths)[0]  # type: ignore[index]
    assert len(set(rows.column("window_start").to_pylist())) == (13 if window == "day" else 3)
    assert len(set(rows.column("minute").to_pylist())) > 900
    assert set(rows.column("country").to_pylist()) == {"DE", "BR", "ZZ"}  # imported: no address, no hint is ZZ


@pytest.mark.parametrize(
    "change",
    [
        {"timestamp": (NOW + timedelta(minutes=11)).isoformat()},  # in the future beyond the skew
        {"timestamp": (NOW - timedelta(days=22)).isoformat()},  # its window takes no rows
        {"timestamp": "2026-11-20 13:35:00Z"},  # a form only the exact path parses
        {"timestamp": "2026-11-20T13:35:00"},  # no zone
        {"session_id": "short"},
    ],
)
def test_history_faults_leave_the_batch_to_the_exact_path(change: dict[str, Any]) -> None:
    batch = [VALID, dict(VALID, **change)]
    assert fast_history(batch) is None
    assert exact_history(batch) is None or change["timestamp"].startswith("2026-11-20 ")
