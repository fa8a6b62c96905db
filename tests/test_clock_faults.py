"""Clock faults: the node's clock jumps forward and back by an hour and a day.

No window may be exported twice, none skipped, and no duration may come out
negative, whatever the clock does.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from node.aggregate import true_tables
from protocol.catalog import load_catalog
from protocol.envelope import verify_envelope
from tests.servers import RunningNode, node_settings, run_node

START = datetime(2026, 11, 10, 22, 30, tzinfo=UTC)
DAY = 86_400


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def event(clock: Clock, i: int, minute_offset: int = 0) -> dict[str, Any]:
    return {
        "app": "runway-calculator", "action": "calculate" if i % 2 else "start",
        "attributes": {"runway_months": 5},
        "timestamp": (clock.now + timedelta(minutes=minute_offset)).isoformat(),
        "session_id": f"clock-session-{i % 7:04d}",
    }


async def post(node: RunningNode, events: list[dict[str, Any]]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.post(node.url + "/v1/events", json=events) as resp:
        return resp.status, await resp.json(content_type=None)


def exported(node: RunningNode) -> list[int]:
    rows = node.node.store.cursor().execute("SELECT window_start FROM snapshots ORDER BY seq").fetchall()
    return [int(w) for (w,) in rows]


@pytest.mark.parametrize(
    "jumps",
    [
        pytest.param([timedelta(hours=1), timedelta(hours=-1), timedelta(hours=3)], id="hour-forward-back"),
        pytest.param([timedelta(days=1), timedelta(days=-1), timedelta(days=2)], id="day-forward-back"),
        pytest.param([timedelta(hours=-1), timedelta(days=-1), timedelta(days=4)], id="backwards-first"),
    ],
)
async def test_clock_jumps_never_export_twice_nor_skip(tmp_path: Path, jumps: list[timedelta]) -> None:
    clock = Clock(START)
    settings = node_settings(tmp_path, export_grace_seconds=600, export_interval_seconds=3600)
    async with run_node(settings, clock=clock) as running:
        node = running.node
        statuses = []
        for step, jump in enumerate([timedelta(0), *jumps]):
            clock.now += jump
            status, _ = await post(running, [event(clock, i + 10 * step) for i in range(10)])
            statuses.append(status)
            # An export pass as the scheduler runs it, at the jumped clock.
            node.export_due()
            # Also events whose client clock went backwards within the window.
            await post(running, [event(clock, 99, minute_offset=-5)])
        windows = exported(running)
        assert len(windows) == len(set(windows)), "a window was exported twice"
        first, last = min(windows), max(windows)
        assert windows == sorted(windows)
        assert windows == list(range(first, last + DAY, DAY)), "a window was skipped"
        # Everything closed at the latest clock reading is exported.
        latest = max(START + sum(jumps[: i + 1], timedelta(0)) for i in range(len(jumps)))
        closed_until = int((latest - timedelta(seconds=600)).timestamp()) // DAY * DAY
        assert last == closed_until - DAY
        for envelope in (node.publisher.stored(w) for w in windows):
            assert envelope is not None
            durations = verify_envelope(envelope).snapshot.metrics["session_duration"]
            assert durations.idx == tuple(range(len(load_catalog().domain("duration"))))  # every cell, once
        # Events are either stored or refused as late (window closed), never lost silently.
        assert set(statuses) <= {202, 422}


def test_session_durations_are_never_negative(tmp_path: Path) -> None:
    from tests.factories import ev, store_with

    catalog = load_catalog()
    # The same session's events arrive out of order: minute 50 first, then minute 3.
    raw = [ev("s", "runway-calculator", "start", 50), ev("s", "runway-calculator", "calculate", 3)]
    store = store_with(tmp_path, raw, catalog)
    w = int(datetime(2026, 11, 20, tzinfo=UTC).timestamp())
    table = true_tables(store.cursor(), catalog, w)["session_duration"]
    assert table[catalog.domain("duration").index("45..60")] == 1
    assert sum(table) == 1
