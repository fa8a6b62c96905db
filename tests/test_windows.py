"""Windows: ISO-week and day alignment (protocol/windows.py); the lifecycle (node/windows.py): closing, expiry, salts."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from node.schema import session_tables
from node.service import close_node, open_node
from node.windows import WindowClosed, WindowLengthChanged
from protocol.catalog import Catalog, load_catalog
from protocol.envelope import verify_envelope
from protocol.errors import BadRequest
from protocol.events import Event
from protocol.windows import DAY, WEEK, is_window_start, parse_window, window_start
from tests.factories import weekly_catalog
from tests.servers import node_settings, run_node
from views.ranges import RangeData, ViewService

MIDNIGHT = datetime(2026, 11, 11, tzinfo=UTC)
W = int((MIDNIGHT - timedelta(days=1)).timestamp())


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def live_event(clock: Clock, session: str = "window-session-1") -> Event:
    return Event.model_validate({
        "app": "runway-calculator", "action": "start", "attributes": {},
        "timestamp": clock.now.isoformat(), "session_id": session,
    })


async def test_an_append_after_the_export_pass_is_refused_and_leaves_no_session_state(tmp_path: Path) -> None:
    """Filter at 23:59:59, export pass at 00:00:01 (no grace), then the append: refused, nothing kept."""
    clock = Clock(MIDNIGHT - timedelta(seconds=1))
    settings = node_settings(tmp_path / "node", export_grace_seconds=0, export_interval_seconds=3600)
    async with run_node(settings, clock=clock) as running:
        node = running.node
        assert node.windows.first_window() == W  # the node exists since before midnight
        results, dropped = await node.ingestor.filter([live_event(clock)], address=None)
        rows = node.ingestor.layout.block([r for r in results if not hasattr(r, "reason")])
        assert len(rows) == 1 and rows.window == W
        clock.now = MIDNIGHT + timedelta(seconds=1)
        await asyncio.to_thread(node.export_due)  # (the node's own pass may have been first)
        assert W in node.windows.exported
        with pytest.raises(WindowClosed):
            await node.writer.submit(rows)
        await asyncio.to_thread(node.store.drain)
        await asyncio.to_thread(node.store.fold_sessions)
        assert W not in session_tables(node.store.cursor())
        assert node.store.cursor().execute("SELECT count(*) FROM events WHERE window_start = ?", [W]).fetchall() == [(0,)]
        # The next window takes rows as before.
        results, _ = await node.ingestor.filter([live_event(clock)], address=None)
        await node.writer.submit(node.ingestor.layout.block(results))  # type: ignore[arg-type]
        assert node.store.row_count() == 1


def test_a_refused_window_does_not_stop_later_ones_and_expiry_removes_state(tmp_path: Path) -> None:
    clock = Clock(MIDNIGHT - timedelta(days=3, hours=-10))
    node = open_node(node_settings(tmp_path / "node", retention_days=3), clock=clock)
    try:
        for day in range(3):
            clock.now = MIDNIGHT - timedelta(days=3 - day, hours=-10)
            result = node.ingestor.privacy.apply(
                live_event(clock, f"window-session-{day}"), now=clock.now, salt_for=node.windows.salt_for
            )
            assert result.event is not None
            node.windows.commit([node.ingestor.layout.block([result.event])])
        first = int((MIDNIGHT - timedelta(days=3)).timestamp())
        # The first day's budget is spent already (another release of it): its export is refused.
        with node.store.transaction() as tx:
            tx.execute("INSERT INTO ledger VALUES (?, 'usage', 1.0, 1.0, 1, 'x', 'd', 0)", [first + 3600])
        clock.now = MIDNIGHT + timedelta(hours=2)
        assert node.export_due() == [first + 86_400, first + 2 * 86_400]  # skipped, not stopped
        assert first in node.windows.due()
        assert first in session_tables(node.store.cursor()) and len(node.windows.salts.days()) == 1
        # Three days after it closed (the retention period), it expires unexported: abandoned, all gone.
        clock.now = MIDNIGHT + timedelta(days=1, hours=2)
        node.export_due()
        assert first in node.windows.abandoned and first not in node.windows.due()
        assert first not in session_tables(node.store.cursor())
        assert node.store.cursor().execute("SELECT count(*) FROM events WHERE window_start = ?", [first]).fetchall() == [(0,)]
        assert node.windows.salts.days() == []
        assert node.metrics.exports_refused.labels("expired")._value.get() == 1
    finally:
        close_node(node)
    reopened = open_node(node_settings(tmp_path / "node", retention_days=3), clock=clock)
    try:
        assert first in reopened.windows.abandoned and first not in reopened.windows.due()
    finally:
        close_node(reopened)


def test_a_weekly_window_keeps_one_salt_and_its_sessions_until_its_export(tmp_path: Path) -> None:
    """ISO weeks: a session's events on Wednesday and Sunday are one session; salt and state go at the week's export."""
    path, weekly = weekly_catalog(tmp_path)
    monday = datetime(2026, 11, 9, tzinfo=UTC)  # ISO week 2026-W46
    clock = Clock(monday + timedelta(days=2, hours=9))
    settings = node_settings(tmp_path / "node", catalog=path, export_grace_seconds=3600)
    node = open_node(settings, clock=clock)
    try:
        assert node.windows.seconds == WEEK == weekly.window_seconds
        for moment in (monday + timedelta(days=2, hours=9), monday + timedelta(days=6, hours=23, minutes=59)):
            clock.now = moment
            result = node.ingestor.privacy.apply(live_event(clock), now=clock.now, salt_for=node.windows.salt_for)
            assert result.event is not None and result.event.window == monday
            node.windows.commit([node.ingestor.layout.block([result.event])])
        node.store.fold_sessions()
        sessions = node.store.cursor().execute("SELECT count(DISTINCT session) FROM events").fetchall()
        assert sessions == [(1,)]  # one salt for the week: the same session on two days
        assert node.windows.salts.days() == [monday.date()]
        w = int(monday.timestamp())
        # Sunday night and Monday inside the grace period: not due yet, salt and state kept.
        clock.now = monday + timedelta(days=7, minutes=30)
        assert node.export_due() == [] and node.windows.salts.days() == [monday.date()]
        assert w in session_tables(node.store.cursor())
        clock.now = monday + timedelta(days=7, hours=1, minutes=1)
        assert node.export_due() == [w]
        snapshot = verify_envelope(node.publisher.export(w)).snapshot
        assert (snapshot.window_start, snapshot.window_end) == (w, w + WEEK)
        assert node.windows.salts.days() == []  # destroyed at the weekly export
        assert w not in session_tables(node.store.cursor())
        assert [e.epsilon for e in node.publisher.ledger()] == [weekly.epsilon(m) for m in sorted(
            weekly.metrics, key=lambda m: m.name)]
        # An event of the exported week is refused; the next week takes rows under a salt of its own.
        clock.now = monday + timedelta(days=6)
        assert node.windows.salt_for(monday) is None
        assert node.windows.salt_for(monday + timedelta(days=7)) is not None
    finally:
        close_node(node)


def test_a_silent_switch_of_window_length_is_refused(tmp_path: Path) -> None:
    close_node(open_node(node_settings(tmp_path / "node")))
    path, _ = weekly_catalog(tmp_path)
    with pytest.raises(WindowLengthChanged, match="86400 s long, the settings ask for 604800 s"):
        open_node(node_settings(tmp_path / "node", catalog=path))


def test_the_window_length_is_the_catalogs_not_a_node_setting(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="`window` moved to the catalog"):
        node_settings(tmp_path / "node", window="day")


@pytest.mark.parametrize(
    ("moment", "monday"),
    [
        pytest.param(datetime(2026, 11, 15, 23, 59, 59, tzinfo=UTC), datetime(2026, 11, 9, tzinfo=UTC), id="sunday-night"),
        pytest.param(datetime(2026, 11, 16, tzinfo=UTC), datetime(2026, 11, 16, tzinfo=UTC), id="monday-midnight"),
        # 2026-12-31 is a Thursday of ISO week 2026-W53, which runs to Sunday 2027-01-03.
        pytest.param(datetime(2027, 1, 3, 12, tzinfo=UTC), datetime(2026, 12, 28, tzinfo=UTC), id="year-end"),
        pytest.param(datetime(2027, 1, 4, tzinfo=UTC), datetime(2027, 1, 4, tzinfo=UTC), id="iso-week-1"),
        pytest.param(datetime(1970, 1, 5, 7, tzinfo=UTC), datetime(1970, 1, 5, tzinfo=UTC), id="first-monday"),
    ],
)
def test_weeks_are_iso_weeks_from_monday_utc(moment: datetime, monday: datetime) -> None:
    start = window_start(int(moment.timestamp()), WEEK)
    assert start == int(monday.timestamp()) and is_window_start(start, WEEK)
    assert datetime.fromtimestamp(start, UTC).isocalendar()[:2] == moment.isocalendar()[:2]
    year, week, _ = moment.isocalendar()
    assert parse_window(f"{year}-W{week:02d}", WEEK) == start
    assert window_start(int(moment.timestamp()), DAY) == int(moment.timestamp()) // DAY * DAY


def test_every_moment_falls_in_the_iso_week_that_holds_it() -> None:
    rng = random.Random(46)
    for _ in range(2_000):
        ts = rng.randrange(0, 4_102_444_800)  # up to 2100
        start = window_start(ts, WEEK)
        assert start <= ts < start + WEEK or start < 0  # the days before the first Monday start in 1969
        begins = datetime.fromtimestamp(start, UTC)
        assert begins.weekday() == 0 and begins.time() == time(0)
        assert begins.isocalendar()[:2] == datetime.fromtimestamp(ts, UTC).isocalendar()[:2]


def test_a_day_that_does_not_start_a_week_is_not_a_weekly_window() -> None:
    with pytest.raises(BadRequest, match="not the start of a window"):
        parse_window("2026-11-11", WEEK)  # a Wednesday
    assert parse_window("2026-11-09", WEEK) == int(datetime(2026, 11, 9, tzinfo=UTC).timestamp())
    with pytest.raises(BadRequest, match="ISO week"):
        parse_window("2026-W99", WEEK)


class _Latest:
    """A range source that only knows its latest window (date_range reads nothing else)."""

    def __init__(self, latest: int | None) -> None:
        self.latest = latest

    def latest_window(self, catalog: Catalog) -> int | None:
        return self.latest

    def load(self, catalog: Catalog, start: int, end: int) -> RangeData:
        raise AssertionError("date_range loads nothing")


def test_a_views_range_is_widened_to_whole_windows(tmp_path: Path) -> None:
    """A weekly catalog's range runs from the Monday of `from` to the Sunday of `to`; a daily one is as asked."""
    _, weekly = weekly_catalog(tmp_path)
    daily = load_catalog()
    monday = int(datetime(2026, 11, 9, tzinfo=UTC).timestamp())
    for catalog, expected in ((weekly, (monday, monday + 2 * WEEK)), (daily, (monday + 2 * DAY, monday + 10 * DAY))):
        service = ViewService(_Latest(None), {catalog.hash: catalog}, lambda: 0)
        assert service.date_range(catalog, {"from": "2026-11-11", "to": "2026-11-18"}) == expected
    # Without `to`: the latest window, whole (its Sunday for a week).
    service = ViewService(_Latest(monday + WEEK), {weekly.hash: weekly}, lambda: 0)
    start, end = service.date_range(weekly, {})
    assert end == monday + 2 * WEEK and is_window_start(start, WEEK) and end - start <= 5 * WEEK
