"""The window lifecycle (node/windows.py): closing at the durable append, expiry, salts, length."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from node.app import close_node, open_node
from node.schema import session_tables
from node.windows import WindowClosed, WindowLengthChanged
from protocol.events import Event
from tests.servers import node_settings, run_node

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


def test_hourly_windows_destroy_the_first_days_salt_of_a_node_created_after_one(tmp_path: Path) -> None:
    clock = Clock(MIDNIGHT + timedelta(hours=5, minutes=10))
    node = open_node(node_settings(tmp_path / "node", window="hour", export_grace_seconds=0), clock=clock)
    try:
        result = node.ingestor.privacy.apply(live_event(clock), now=clock.now, salt_for=node.windows.salt_for)
        assert result.event is not None
        node.windows.commit([node.ingestor.layout.block([result.event])])
        assert node.windows.salts.days() == [MIDNIGHT.date()]
        clock.now = MIDNIGHT + timedelta(days=1, minutes=1)
        node.export_due()
        assert node.windows.salts.days() == []
    finally:
        close_node(node)


def test_a_silent_switch_of_window_length_is_refused(tmp_path: Path) -> None:
    close_node(open_node(node_settings(tmp_path / "node")))
    with pytest.raises(WindowLengthChanged, match="86400 s long, the settings ask for 3600 s"):
        open_node(node_settings(tmp_path / "node", window="hour"))
