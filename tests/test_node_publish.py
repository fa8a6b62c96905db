"""The node publishing end to end: import history, serve, export closed windows, push, serve envelopes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from protocol.envelope import verify_envelope
from tests.conftest import HubStandIn
from tests.servers import Process


def liberation(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "liberation", *args], input=stdin.encode() if stdin else None,
        capture_output=True, timeout=120, check=True,
    )


def history(days: int) -> str:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    lines = []
    for d in range(1, days + 1):
        for s in range(40):
            ts = (today - timedelta(days=d) + timedelta(minutes=10 + s)).isoformat()
            lines.append(json.dumps({"app": "runway-calculator", "action": "calculate", "timestamp": ts,
                                     "session_id": f"hist-{d}-{s:04d}", "attributes": {"runway_months": 7}}))
    return "\n".join(lines) + "\n"


@pytest.mark.slow
async def test_import_serve_export_push(tmp_path: Path, hub: tuple[HubStandIn, str]) -> None:
    stand_in, hub_url = hub
    data = tmp_path / "node"
    common = ["--data-dir", str(data)]
    assert b"120 events accepted" in liberation("node", "import", "-", *common, stdin=history(3)).stdout
    env = {
        "LIBERATION_NODE_DATA_DIR": str(data), "LIBERATION_NODE_PORT": "0", "LIBERATION_NODE_METRICS_PORT": "0",
        "LIBERATION_NODE_PUSH__HUB_URL": hub_url, "LIBERATION_NODE_PUSH__INTERVAL_SECONDS": "0.2",
        # No grace: yesterday is closed at start even in the hour after midnight UTC.
        "LIBERATION_NODE_EXPORT_GRACE_SECONDS": "0",
    }
    proc = Process(["node", "serve"], tmp_path / "node.log", env=env)
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):  # exported at start, pushed within the push interval
                if len(stand_in.received) >= 3:
                    break
                await asyncio.sleep(0.1)
            assert len(stand_in.received) == 3
            snapshots = [verify_envelope(b).snapshot for b in stand_in.received]
            assert [s.seq for s in snapshots] == [1, 2, 3]
            assert snapshots[0].window_end - snapshots[0].window_start == 86_400
            async with session.get(proc.url + "/v1/snapshots") as resp:
                listed = (await resp.json())["snapshots"]
            assert len(listed) == 3
            day = listed[0]["window_start"][:10]
            async with session.get(f"{proc.url}/v1/snapshots/{day}") as resp:
                assert resp.status == 200 and resp.content_type == "application/msgpack"
                served = await resp.read()
            assert served == stand_in.received[0]
            async with session.get(proc.url + "/v1/snapshots/2001-01-01") as resp:
                assert resp.status == 404
            async with session.get(proc.url + "/v1/snapshots/yesterday") as resp:
                assert resp.status == 400
            async with session.get(proc.url + "/v1/ledger") as resp:
                ledger = await resp.json()
            assert len(ledger["entries"]) == 3 * 17
            async with session.get(proc.metrics_url + "/metrics") as resp:
                assert "liberation_node_snapshots_exported_total 3.0" in await resp.text()
            async with session.get(proc.url + "/v1/local/summary") as resp:
                summary = await resp.json()
            assert len(summary["windows"]) == 3
            # The node's own view: the hub's views API over its published snapshots only.
            async with session.get(proc.url + "/v1/views/headline") as resp:
                view = await resp.json()
            assert (view["windows"], view["nodes"]) == (3, 1)
            assert view["data"]["sessions"]["value"] > 0
            async with session.get(proc.url + "/v1/windows") as resp:
                assert [w["window_start"] for w in (await resp.json())["windows"]] == [x["window_start"][:10] for x in listed]
    finally:
        assert proc.stop() == 0
    # Offline: the same bytes again, the budget, and late events for exported windows go nowhere.
    out = tmp_path / "snapshot.bin"
    liberation("node", "export", "--window", day, "--out", str(out), *common)
    assert out.read_bytes() == served
    budget = liberation("node", "budget", *common).stdout.decode()
    assert "epsilon cap per UTC day: 1" in budget and budget.count("epsilon 1.0000") == 3
    late = liberation("node", "import", "-", *common, stdin=history(1)).stdout.decode()
    assert "0 events accepted" in late and "window-closed" in late
    salts = list((data / "salts").glob("*.salt"))
    assert all(p.stem >= datetime.now(UTC).strftime("%Y-%m-%d") for p in salts)


def test_export_of_an_open_window_is_refused(tmp_path: Path) -> None:
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    result = subprocess.run(
        [sys.executable, "-m", "liberation", "node", "export", "--window", today, "--out", str(tmp_path / "x"),
         "--data-dir", str(tmp_path / "node")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1 and "still open" in result.stderr
