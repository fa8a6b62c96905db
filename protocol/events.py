"""The ingest schema: one Event, or an EventBatch of at most 1,000, validated strictly."""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    field_validator,
)

from protocol.countries import ISO_COUNTRIES

SLUG_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
MAX_ATTRIBUTES = 32
MAX_ATTRIBUTE_STRING = 128
MAX_BATCH = 1000

Slug = Annotated[str, StringConstraints(pattern=SLUG_PATTERN, strict=True)]
"""An app, action or attribute name: lowercase, digits, `_` and `-`, 1-64 characters."""

AttributeValue = str | bool | int | float
"""A scalar attribute value; floats must be finite, strings at most 128 characters."""

SESSION_ID = re.compile(r"[\x21-\x7e]{8,128}")
"""A session id's shape, for `fullmatch` (`$` would let a trailing newline through)."""
ATTRIBUTE_NAME = re.compile(SLUG_PATTERN.removeprefix("^").removesuffix("$"))
"""An attribute name's shape, for `fullmatch`; compiled once, as names are checked per event."""


def _require_text(value: Any) -> Any:
    # RFC 3339 text only: lax coercion would take a bare number as epoch seconds.
    if not isinstance(value, str):
        raise ValueError("timestamp must be an RFC 3339 string")
    return value


def _check_timestamp(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamp must carry a timezone (RFC 3339)")
    return value


def geo_hint_country(value: str | None) -> str | None:
    """The country a `geo_hint` names, or None.

    An invalid hint is not an error: the privacy filter falls back to GeoIP.
    Only the shape is checked here, so nothing odd is ever carried further.
    """
    if value is None:
        return None
    return value.upper() if value.upper() in ISO_COUNTRIES else None


class Event(BaseModel):
    """One tool event as sent by a client, before the privacy filter."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    app: Slug
    action: Slug
    attributes: dict[str, AttributeValue] = Field(default_factory=dict)
    timestamp: Annotated[
        datetime, BeforeValidator(_require_text), AfterValidator(_check_timestamp)
    ]
    geo_hint: Annotated[str | None, AfterValidator(geo_hint_country)] = Field(
        default=None, max_length=64
    )
    session_id: Annotated[str, StringConstraints(strict=True)]

    @field_validator("attributes", mode="before")
    @classmethod
    def _attributes_shape(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        if len(value) > MAX_ATTRIBUTES:
            raise ValueError(f"at most {MAX_ATTRIBUTES} attributes")
        for key, item in value.items():
            if not isinstance(key, str) or not ATTRIBUTE_NAME.fullmatch(key):
                raise ValueError("attribute names must be slugs ([a-z0-9][a-z0-9_-]{0,63})")
            # bool is checked before int: JSON true must stay a bool, not become 1.
            if isinstance(item, bool) or isinstance(item, int):
                continue
            if isinstance(item, float):
                if not math.isfinite(item):
                    raise ValueError(f"attribute {key!r} must be a finite number")
                continue
            if isinstance(item, str):
                if len(item) > MAX_ATTRIBUTE_STRING:
                    raise ValueError(
                        f"attribute {key!r} is longer than {MAX_ATTRIBUTE_STRING} characters"
                    )
                continue
            raise ValueError(f"attribute {key!r} must be a string, number or boolean")
        return value

    @field_validator("session_id")
    @classmethod
    def _session_shape(cls, value: str) -> str:
        # The message never echoes the value: a session id is never put in an error.
        if not SESSION_ID.fullmatch(value):
            raise ValueError("session_id must be 8-128 printable ASCII characters")
        return value


class EventBatch(BaseModel):
    """A batch of at most 1,000 events, accepted or rejected as a whole."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    events: Annotated[list[Event], Field(min_length=1, max_length=MAX_BATCH)]


EVENTS_ADAPTER: TypeAdapter[list[Event]] = TypeAdapter(
    Annotated[list[Event], Field(min_length=1, max_length=MAX_BATCH)]
)
"""Validates a bare JSON array of events (the batch form clients send)."""
