"""The ingest schema: strict shapes, and errors that never echo a session id."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from protocol.events import EVENTS_ADAPTER, MAX_BATCH, Event, EventBatch

GOOD: dict[str, Any] = {
    "app": "runway-calculator",
    "action": "calculate",
    "attributes": {"runway_months": 8.5, "savings_band": "10k-25k", "industry": "tech"},
    "timestamp": "2025-01-23T21:45:00Z",
    "geo_hint": "US",
    "session_id": "sess_abc123",
}


def _with(**changes: Any) -> dict[str, Any]:
    event = dict(GOOD)
    event.update(changes)
    return {k: v for k, v in event.items() if v is not ...}


def test_design_example_is_valid() -> None:
    event = Event.model_validate_json(json.dumps(GOOD))
    assert event.app == "runway-calculator"
    assert event.attributes["runway_months"] == 8.5
    assert event.timestamp.utcoffset() is not None


def test_bool_attribute_stays_bool() -> None:
    event = Event.model_validate(_with(attributes={"done": True, "n": 3}))
    assert event.attributes["done"] is True
    assert event.attributes["n"] == 3 and type(event.attributes["n"]) is int


def test_geo_hint_invalid_falls_back_to_none() -> None:
    assert Event.model_validate(_with(geo_hint="XX")).geo_hint is None
    assert Event.model_validate(_with(geo_hint="de")).geo_hint == "DE"
    assert Event.model_validate(_with(geo_hint=...)).geo_hint is None


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        pytest.param({"app": "Runway"}, "app", id="app-uppercase"),
        pytest.param({"app": "-x"}, "app", id="app-leading-dash"),
        pytest.param({"app": "a" * 65}, "app", id="app-too-long"),
        pytest.param({"action": 5}, "action", id="action-not-string"),
        pytest.param({"timestamp": "2025-01-23T21:45:00"}, "timestamp", id="naive-timestamp"),
        pytest.param({"timestamp": 1737668700}, "timestamp", id="epoch-number"),
        pytest.param({"timestamp": "yesterday"}, "timestamp", id="not-a-date"),
        pytest.param({"session_id": "short"}, "session_id", id="session-too-short"),
        pytest.param({"session_id": "x" * 129}, "session_id", id="session-too-long"),
        pytest.param({"session_id": "has space!"}, "session_id", id="session-unprintable"),
        pytest.param({"attributes": {"x": [1]}}, "attributes", id="list-value"),
        pytest.param({"attributes": {"x": {"a": 1}}}, "attributes", id="object-value"),
        pytest.param({"attributes": {"x": "y" * 129}}, "attributes", id="long-string"),
        pytest.param({"attributes": {"Bad Key": 1}}, "attributes", id="bad-attribute-name"),
        pytest.param({"attributes": {f"a{i}": i for i in range(33)}}, "attributes", id="too-many"),
        pytest.param({"extra": 1}, "extra", id="unknown-field"),
        pytest.param({"app": ...}, "app", id="missing-app"),
    ],
)
def test_bad_events_rejected_naming_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        Event.model_validate(_with(**changes))
    assert field in {str(e["loc"][0]) for e in info.value.errors()}


def test_non_finite_float_rejected() -> None:
    with pytest.raises(ValidationError):
        Event.model_validate(_with(attributes={"x": float("nan")}))
    with pytest.raises(ValidationError):
        Event.model_validate(_with(attributes={"x": float("inf")}))


def test_session_error_message_never_echoes_the_id() -> None:
    secret = "secret session!"
    with pytest.raises(ValidationError) as info:
        Event.model_validate(_with(session_id=secret))
    messages = " ".join(e["msg"] for e in info.value.errors())
    assert secret not in messages


def test_batch_limits() -> None:
    assert len(EventBatch.model_validate({"events": [GOOD] * MAX_BATCH}).events) == MAX_BATCH
    with pytest.raises(ValidationError):
        EventBatch.model_validate({"events": [GOOD] * (MAX_BATCH + 1)})
    with pytest.raises(ValidationError):
        EventBatch.model_validate({"events": []})
    assert len(EVENTS_ADAPTER.validate_json(json.dumps([GOOD] * 3))) == 3
    with pytest.raises(ValidationError):
        EVENTS_ADAPTER.validate_json(json.dumps([GOOD] * (MAX_BATCH + 1)))
