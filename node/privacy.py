"""The privacy filter: pure functions that turn a validated Event into what may be stored.

Runs before anything touches storage (DESIGN.md, Privacy filter):
1. schema: app and action must be declared; undeclared attributes are dropped;
   numbers are bucketed, money banded, unknown categories become `other`;
2. geography: a valid `geo_hint`, else the country the caller resolved from the
   IP (the IP itself never comes in here);
3. sessions: HMAC-SHA256 of the session key under the window's secret salt;
4. time: the UTC hour only, and the minute inside the window for the session's
   first/last-minute state; live events far from the server clock are refused.
No I/O here: the salt and the clock come in as arguments.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from node.rules import AppRules, StorageRules
from protocol.catalog import Catalog
from protocol.countries import UNKNOWN_COUNTRY
from protocol.events import Event
from protocol.windows import DAY, window_start

SaltSource = Callable[[datetime], bytes | None]
"""Gives the secret salt of a window, or None when that window is closed to new events."""


def window_of(moment: datetime, window_seconds: int = DAY) -> datetime:
    """Start of the window (a UTC day by default, or an ISO week) holding `moment`."""
    return datetime.fromtimestamp(window_start(int(moment.timestamp()), window_seconds), UTC)


def session_hash(salt: bytes, session_key: bytes) -> int:
    """HMAC-SHA256(salt, key), first 8 bytes as a signed int64: the only session id stored.

    With the salt destroyed at export, the stored value cannot be linked back
    to the raw id nor to the same person's sessions in other windows. 64 bits
    keep collisions negligible at a day's volume (n^2 / 2^65).
    """
    digest = hmac.new(salt, session_key, hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class SessionHasher:
    """`session_hash` under one salt, keyed once: HMAC-SHA256 (RFC 2104) from hashlib's SHA-256 states.

    HMAC(K, m) = H((K ^ opad) || H((K ^ ipad) || m)); the two keyed states are
    hashed once, and each session key costs two state copies. That is about
    twice as fast as copying an `hmac.HMAC` (whose Python wrapper dominates
    at a few dozen bytes), with the same digest (tests/test_privacy_filter.py).
    """

    __slots__ = ("inner", "outer")

    def __init__(self, salt: bytes) -> None:
        block = (salt if len(salt) <= _SHA256_BLOCK else hashlib.sha256(salt).digest()).ljust(_SHA256_BLOCK, b"\0")
        self.inner = hashlib.sha256(block.translate(_IPAD))
        self.outer = hashlib.sha256(block.translate(_OPAD))

    def __call__(self, session_key: bytes) -> int:
        inner = self.inner.copy()
        inner.update(session_key)
        outer = self.outer.copy()
        outer.update(inner.digest())
        return int.from_bytes(outer.digest()[:8], "big", signed=True)


_SHA256_BLOCK = 64
_IPAD = bytes(b ^ 0x36 for b in range(256))  # byte -> byte ^ ipad, for bytes.translate
_OPAD = bytes(b ^ 0x5C for b in range(256))


@dataclass(frozen=True, slots=True)
class FilteredEvent:
    """What the store may keep of one event: no raw id, no exact time, declared values only."""

    window: datetime  # window start (a UTC day, or an ISO week's Monday)
    hour: datetime  # UTC hour
    minute: int  # minutes since the window start (session state only, deleted at export)
    session: int
    app: str
    action: str
    country: str
    attributes: dict[str, str]  # attribute name -> domain label


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why one event was refused: the field at fault and a problem slug; never its value."""

    field: str
    reason: str
    message: str


WINDOW_CLOSED = Rejection("timestamp", "window-closed", "the event's window is closed")
"""The rejection of a live event whose window takes no more events (exported or past retention)."""


@dataclass(slots=True)
class FilterResult:
    event: FilteredEvent | None
    rejection: Rejection | None
    dropped_attributes: int


class PrivacyFilter:
    """Applies the catalog's allowlist and domains; pure, so it is tested without a server."""

    def __init__(self, catalog: Catalog, *, clock_skew: timedelta) -> None:
        self._catalog = catalog
        self._skew = clock_skew
        self._window_seconds = catalog.window_seconds
        self.rules = StorageRules(catalog)
        self._last_slot: tuple[int, bytes | None, Slot] | None = None  # (unix minute, salt, slot)
        self._last_window: _KeyedWindow | None = None

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    @property
    def clock_skew(self) -> timedelta:
        """How far a live event's timestamp may be from the server clock."""
        return self._skew

    def resolve_country(self, geo_hint: str | None, client_country: str | None) -> str:
        """A valid hint wins; else the IP's country; else ZZ."""
        return geo_hint or client_country or UNKNOWN_COUNTRY

    def apply(
        self,
        event: Event,
        *,
        now: datetime,
        salt_for: SaltSource,
        session_key: bytes | None = None,
        client_country: str | None = None,
        live: bool = True,
    ) -> FilterResult:
        """Filter one event. `live`: the server clock decides the time; else the event's own."""
        admitted = self._admit(event, now=now, live=live)
        if isinstance(admitted, FilterResult):
            return admitted
        allowed, moment = admitted
        return self._keep(event, allowed, self.slot(moment, salt_for), session_key, client_country)

    def apply_many(
        self,
        events: Sequence[Event],
        *,
        now: datetime,
        salt_for: SaltSource,
        session_keys: Sequence[bytes] | None = None,
        client_country: str | None = None,
    ) -> tuple[list[FilteredEvent | Rejection], int]:
        """`apply` (live) to each event of a batch: each one's outcome, in order, and the attributes dropped.

        Live events all take the server clock's `now`, so their window, hour,
        minute and salt are the same: they are worked out once per batch (on
        the first event that gets that far, as `apply` would), not per event.
        """
        slot: Slot | None = None
        outcomes: list[FilteredEvent | Rejection] = []
        dropped = 0
        for i, event in enumerate(events):
            admitted = self._admit(event, now=now, live=True)
            if not isinstance(admitted, FilterResult):
                if slot is None:
                    slot = self.slot(now, salt_for)
                key = session_keys[i] if session_keys is not None else None
                admitted = self._keep(event, admitted[0], slot, key, client_country)
            if admitted.event is not None:
                outcomes.append(admitted.event)
                dropped += admitted.dropped_attributes
            else:
                assert admitted.rejection is not None
                outcomes.append(admitted.rejection)
        return outcomes, dropped

    def _admit(self, event: Event, *, now: datetime, live: bool) -> FilterResult | tuple[AppRules, datetime]:
        """The checks before any salt is touched: a rejection, or (the app's rules, moment)."""
        allowed = self.rules.apps.get(event.app)
        if allowed is None:
            return _reject("app", "undeclared-app", "app is not declared in the catalog")
        if event.action not in allowed.actions:
            return _reject("action", "undeclared-action", "action is not declared for this app")
        if live:
            if abs(event.timestamp - now) > self._skew:
                return _reject(
                    "timestamp", "timestamp-skew", "timestamp is too far from the server clock"
                )
            return allowed, now
        if event.timestamp - now > self._skew:
            return _reject("timestamp", "timestamp-future", "timestamp is in the future")
        return allowed, event.timestamp.astimezone(UTC)

    def slot(self, moment: datetime, salt_for: SaltSource) -> Slot:
        """Where `moment` falls: its window, hour, minute, and the HMAC keyed with the window's salt.

        The last slot is kept: live requests of the same minute under the same
        salt share it (keying the HMAC was a third of a one-event request's filter).
        So is the last window's keyed HMAC: imported history moves from minute to
        minute inside a window, and keying it per event was a fifth of an import.
        """
        seconds = int(moment.timestamp())
        minute_of = seconds // 60
        last = self._last_slot
        if last is not None and last[0] == minute_of:
            if salt_for(last[2].window) is last[1]:
                return last[2]
        start = window_start(seconds, self._window_seconds)
        held = self._last_window
        same_window = held is not None and held.start == start
        window = held.window if held is not None and same_window else datetime.fromtimestamp(start, UTC)
        salt = salt_for(window)
        if held is None or not same_window or held.salt != salt:
            # One salt per window: a session is cut at window boundaries, so that
            # each part belongs to exactly one window (the one it starts in).
            held = self._last_window = _KeyedWindow(start, window, salt, None if salt is None else SessionHasher(salt))
        hour = seconds - seconds % 3600
        slot = Slot(
            window=window,
            hour=datetime.fromtimestamp(hour, UTC),
            minute=(seconds - start) // 60,
            hasher=held.hasher,
            window_unix=start,
            hour_unix=hour,
        )
        self._last_slot = (minute_of, salt, slot)
        return slot

    def _keep(
        self,
        event: Event,
        allowed: AppRules,
        slot: Slot,
        session_key: bytes | None,
        client_country: str | None,
    ) -> FilterResult:
        if slot.hasher is None:
            return FilterResult(None, WINDOW_CLOSED, 0)
        kept, dropped = self.rules.labels(allowed, event.attributes)
        key = session_key if session_key is not None else event.session_id.encode()
        filtered = FilteredEvent(
            window=slot.window,
            hour=slot.hour,
            minute=slot.minute,
            session=slot.hasher(key),
            app=event.app,
            action=event.action,
            country=self.resolve_country(event.geo_hint, client_country),
            attributes=kept,
        )
        return FilterResult(filtered, None, dropped)


class _KeyedWindow(NamedTuple):
    """A window's start, its salt and the HMAC keyed with it: kept while events stay in that window."""

    start: int
    window: datetime
    salt: bytes | None
    hasher: SessionHasher | None


class Slot(NamedTuple):
    """Where one moment falls: shared by every live event of a batch, and by batches of the same minute."""

    window: datetime
    hour: datetime
    minute: int
    hasher: SessionHasher | None  # keyed with the window's salt; None when the window is closed
    window_unix: int  # window and hour in unix seconds, as rows carry them
    hour_unix: int


def _reject(field: str, reason: str, message: str) -> FilterResult:
    return FilterResult(None, Rejection(field, reason, message), 0)
