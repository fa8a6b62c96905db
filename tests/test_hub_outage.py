"""A hub outage: windows pile up at the node, backoff stays bounded, then every snapshot arrives once."""

from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path

import aiohttp

from federation.settings import HubSettings
from node.outbox import Outbox
from node.settings import PushSettings
from protocol.keys import SigningKey
from tests.factories import NOW, WINDOW, ev, store_with
from tests.servers import run_hub
from tests.test_export import publisher

DAY = 86_400


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def test_outage_then_every_snapshot_exactly_once(tmp_path: Path) -> None:
    key = SigningKey.from_seed(bytes(32))  # the key tests.test_export.publisher signs with
    raw = [ev(f"s{d}-{i}", "runway-calculator", "start", d * 1440 + i) for d in range(3) for i in range(40)]
    store = store_with(tmp_path / "node", raw)
    late_clock = lambda: WINDOW + timedelta(days=6)  # noqa: E731
    pub = publisher(store, tmp_path / "node", clock=late_clock, cap=1.0)
    for window in pub.windows.due():
        pub.export(window)
    windows = sorted(pub.windows.exported)
    assert len(windows) == 5  # three days of data, two empty days (exported all the same)

    port = free_port()
    clock = Clock(NOW.timestamp())
    settings = PushSettings(hub_url=f"http://127.0.0.1:{port}", min_backoff_seconds=2, max_backoff_seconds=300)
    outbox = Outbox(store, settings, now=clock)

    # 30 minutes of outage, the push loop looking every 10 seconds.
    async with aiohttp.ClientSession() as session:
        for _ in range(180):
            assert await outbox.push_due(session) == 0
            clock.t += 10
        entries = outbox.entries()
        assert all(e.state == "pending" for e in entries)
        for e in entries:
            # Exponential backoff: a handful of tries in 30 minutes, not one per loop turn...
            assert 5 <= e.attempts <= 30, [x.attempts for x in entries]
            # ...and never a wait beyond the cap.
            assert e.next_attempt - clock.t <= settings.max_backoff_seconds

        hub_settings = HubSettings(data_dir=tmp_path / "hub", port=port, metrics_port=0, window_horizon_days=3650)
        async with run_hub(hub_settings, now=lambda: clock.t + 30 * DAY) as hub:
            assert hub.url.endswith(f":{port}")
            hub.hub.registry.enroll("the-node", key.public)
            clock.t += settings.max_backoff_seconds + 1  # every entry is due again
            assert await outbox.push_due(session) == len(windows)
            assert await outbox.push_due(session) == 0
            assert all(e.state == "sent" for e in outbox.entries())
            rows = hub.hub.store.cursor().execute("SELECT window_start FROM envelopes ORDER BY 1").fetchall()
            assert [int(w) for (w,) in rows] == windows
            log = hub.hub.store.cursor().execute("SELECT count(*) FROM translog").fetchall()
            assert log == [(len(windows),)]
