"""Validation and the privacy filter of a whole batch of events in one pass, straight into rows.

The exact path validates each decoded item into a pydantic `Event`, filters
it into a `FilteredEvent` (node/privacy.py) and turns those into Arrow rows
(node/rows.py): three Python objects per event. This pass reads the decoded
JSON or msgpack items once and writes the row tuples (a `RowBlock`) directly.
Both decide what is stored with the same compiled rules (node/rules.py).

It answers None whenever it is not certain that the exact path would accept
every event of the batch: a shape it does not know, any fault, a timestamp
it does not parse itself, a closed window. That batch then takes the exact
path, which decides and names the faulty field. So this pass never accepts
what the exact path refuses, and what it stores is what the exact path
stores; `tests/test_fast_filter.py` checks both on generated batches, under
the default catalog and a generated one. Live batches (`run`) take the server
clock's window, hour and minute; imported ones (`run_history`, `node import`)
each event's own, as the exact path's `apply(live=False)`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from node.privacy import PrivacyFilter, SaltSource, Slot
from node.rows import Row, RowBlock, RowLayout
from protocol.countries import UNKNOWN_COUNTRY
from protocol.events import (
    ATTRIBUTE_NAME,
    MAX_ATTRIBUTE_STRING,
    MAX_ATTRIBUTES,
    MAX_BATCH,
    SESSION_ID,
    geo_hint_country,
)

# The RFC 3339 forms every datetime parser agrees on; anything else goes the exact way.
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:Z|[+-][0-9]{2}:[0-9]{2})")
_EMPTY: dict[str, Any] = {}


class FastFilter:
    """The exact path's validation and filter for the common case: every event of a live batch valid."""

    def __init__(self, privacy: PrivacyFilter, layout: RowLayout) -> None:
        if layout.attributes != tuple(privacy.catalog.attributes):
            raise ValueError("the row layout is not the privacy filter's catalog's")
        self._privacy = privacy
        self._attributes = len(layout.attributes)

    def run(
        self,
        items: list[Any],
        *,
        now: datetime,
        salt_for: SaltSource,
        client_country: Callable[[], str | None],
    ) -> tuple[RowBlock, int] | None:
        """(rows, attributes dropped) of a batch of live events, or None: take the exact path.

        `client_country` is called at most once, and only if an event has no
        valid `geo_hint`: the caller's address is looked up only when needed
        (possibly for a batch that then takes the exact path).
        """
        if not 1 <= len(items) <= MAX_BATCH:
            return None
        slot = self._privacy.slot(now, salt_for)
        if slot.hasher is None:
            return None
        skew = self._privacy.clock_skew
        times: dict[str, bool] = {}

        def place(stamp: str) -> Slot | None:
            """The server clock's slot, if the event's own time is near it."""
            fresh = times.get(stamp)
            if fresh is None:
                fresh = times[stamp] = _near(stamp, now, skew)
            return slot if fresh else None

        return self._rows(items, place, client_country)

    def run_history(self, items: list[Any], *, now: datetime, salt_for: SaltSource) -> tuple[RowBlock, int] | None:
        """(rows, attributes dropped) of a batch of imported events, or None: take the exact path.

        As `PrivacyFilter.apply(live=False)`: each event's own timestamp decides
        its window, hour and minute (not in the future beyond the skew; its window
        still taking rows). Imported events carry no address: no hint is ZZ.
        """
        if not 1 <= len(items) <= MAX_BATCH:
            return None
        privacy = self._privacy
        skew = privacy.clock_skew
        salts: dict[datetime, bytes | None] = {}

        def salt_of(window: datetime) -> bytes | None:
            """`salt_for`, asked once per window in a batch (as a live batch asks once)."""
            if window in salts:
                return salts[window]
            salt = salts[window] = salt_for(window)
            return salt

        def place(stamp: str) -> Slot | None:
            """The slot of the event's own time, if it is not in the future and its window takes rows."""
            moment = _parse(stamp)
            if moment is None or moment - now > skew:
                return None
            slot = privacy.slot(moment.astimezone(UTC), salt_of)
            return slot if slot.hasher is not None else None

        return self._rows(items, place, lambda: None)

    def _rows(
        self, items: list[Any], place: Callable[[str], Slot | None], client_country: Callable[[], str | None]
    ) -> tuple[RowBlock, int] | None:
        """The batch's rows, each event where `place` puts its timestamp; None at the first doubt."""
        apps = self._privacy.rules.apps
        width = self._attributes
        rows: list[Row] = []
        fallback: str | None = None  # the client's country, looked up at the first event without a hint
        dropped = 0
        for item in items:
            if type(item) is not dict:
                return None
            app, action, stamp, session_id = (
                item.get("app"), item.get("action"), item.get("timestamp"), item.get("session_id")
            )
            attributes = item.get("attributes", _EMPTY)
            present = 4 + ("attributes" in item) + ("geo_hint" in item)
            if len(item) != present or type(app) is not str or type(action) is not str:
                return None  # an unknown key (extra="forbid"), a missing one, or a wrong type
            declared = apps.get(app)
            if declared is None or action not in declared.actions:
                return None
            if type(stamp) is not str:
                return None
            slot = place(stamp)
            if slot is None:
                return None
            if type(session_id) is not str or SESSION_ID.fullmatch(session_id) is None:
                return None
            geo = item.get("geo_hint")
            if geo is not None:
                if type(geo) is not str or len(geo) > 64:
                    return None
                geo = geo_hint_country(geo)
            if type(attributes) is not dict or len(attributes) > MAX_ATTRIBUTES:
                return None
            labels: list[str | None] = [None] * width
            rules = declared.attributes
            for name, value in attributes.items():
                kind = type(value)
                if kind is str:
                    if len(value) > MAX_ATTRIBUTE_STRING:
                        return None
                elif kind is float:
                    if not math.isfinite(value):
                        return None
                elif kind is not int and kind is not bool:
                    return None
                rule = rules.get(name)
                if rule is None:
                    if type(name) is not str or ATTRIBUTE_NAME.fullmatch(name) is None:
                        return None
                    dropped += 1  # a valid name the app does not declare
                    continue
                label = rule.label(value)
                if label is None:
                    dropped += 1  # a type or band the attribute's rule does not take
                    continue
                labels[rule.column] = label
            if not geo:
                if fallback is None:
                    fallback = client_country() or UNKNOWN_COUNTRY
                geo = fallback
            hasher = slot.hasher
            assert hasher is not None  # `place` gives only slots of windows that take rows
            rows.append((slot.window_unix, slot.hour_unix, hasher(session_id.encode()), app, action, geo, slot.minute,
                         *labels))
        return RowBlock(rows), dropped


def _parse(stamp: str) -> datetime | None:
    """`stamp` as an aware datetime if it is plain RFC 3339 (None: let the exact path decide)."""
    if _TIMESTAMP.fullmatch(stamp) is None:
        return None
    try:
        return datetime.fromisoformat(stamp)
    except ValueError:
        return None


def _near(stamp: str, now: datetime, skew: timedelta) -> bool:
    """Whether `stamp` is plain RFC 3339 within `skew` of `now` (False: let the exact path decide)."""
    moment = _parse(stamp)
    return moment is not None and abs(moment - now) <= skew
