"""Whole-process node tests: `liberation node serve` as a subprocess, real HTTP, SIGKILL, and a byte scan."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import pytest

from node.privacy import session_hash
from tests.servers import Process

CANARY_IP4 = "203.0.113.77"
CANARY_IP6 = "2001:db8::77"
CANARY_SESSION = "sess_CANARY_9f8e7d6c"


def event(session_id: str, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "app": "real-wage-calculator",
        "action": "reveal",
        "attributes": {"salary": 87_000, "industry": "tech", "real_wage_gap_pct": 23},
        "timestamp": datetime.now(UTC).isoformat(),
        "session_id": session_id,
    }
    data.update(changes)
    return data


def node_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        "LIBERATION_NODE_DATA_DIR": str(data_dir),
        "LIBERATION_NODE_PORT": "0", "LIBERATION_NODE_METRICS_PORT": "0",
        "LIBERATION_NODE_RATE_LIMIT__REQUESTS_PER_SECOND": "0",
    }
    env.update(extra)
    return env


def start_node(data_dir: Path, log: Path, **extra: str) -> Process:
    return Process(["node", "serve"], log, env=node_env(data_dir, **extra))


async def test_no_ip_or_session_id_anywhere_on_disk_or_in_logs(tmp_path: Path, geoip_db: Path) -> None:
    data_dir, log = tmp_path / "node", tmp_path / "node.log"
    proc = start_node(
        data_dir,
        log,
        LIBERATION_NODE_GEOIP_DATABASE=str(geoip_db),
        LIBERATION_NODE_TRUSTED_PROXIES='["127.0.0.1/32"]',
        LIBERATION_NODE_PLAUSIBLE__DOMAINS='{"wage.example.org": "real-wage-calculator"}',
        LIBERATION_NODE_PLAUSIBLE__EVENTS='{"pageview": "start"}',
        LIBERATION_NODE_LOG_LEVEL="DEBUG",
    )
    try:
        async with aiohttp.ClientSession() as session:
            for ip in (CANARY_IP4, CANARY_IP6):
                headers = {"X-Forwarded-For": ip, "User-Agent": "CanaryAgent/1.0"}
                async with session.post(
                    proc.url + "/v1/events", json=[event(CANARY_SESSION) for _ in range(5)], headers=headers
                ) as resp:
                    assert resp.status == 202
                plausible = {"n": "pageview", "u": "https://wage.example.org/", "d": "wage.example.org"}
                async with session.post(
                    proc.url + "/api/event", data=json.dumps(plausible), headers={**headers, "Content-Type": "text/plain"}
                ) as resp:
                    assert resp.status == 202 and "x-plausible-dropped" not in resp.headers
                # Rejected requests must not leak either: not in the answer, not in the log.
                bad = event(CANARY_SESSION, app="Not A Slug")
                async with session.post(proc.url + "/v1/events", json=bad, headers=headers) as resp:
                    assert resp.status == 400
                    assert CANARY_SESSION not in await resp.text()
                    assert ip not in await resp.text()
                bad_session = event(CANARY_SESSION + " with spaces")
                async with session.post(proc.url + "/v1/events", json=bad_session, headers=headers) as resp:
                    assert resp.status == 400
                    assert CANARY_SESSION not in await resp.text()
    finally:
        assert proc.stop() == 0

    con = duckdb.connect(str(data_dir / "node.duckdb"), read_only=True)
    assert con.execute("SELECT country, count(*) FROM events GROUP BY 1 ORDER BY 1").fetchall() == [("BR", 6), ("DE", 6)]
    con.close()

    needles = {
        "IPv4 text": CANARY_IP4.encode(),
        "IPv4 packed": socket.inet_pton(socket.AF_INET, CANARY_IP4),
        "IPv6 text": CANARY_IP6.encode(),
        "IPv6 packed": socket.inet_pton(socket.AF_INET6, CANARY_IP6),
        "session id": CANARY_SESSION.encode(),
        "user agent": b"CanaryAgent",
    }
    files = [p for p in data_dir.rglob("*") if p.is_file()] + [log]
    assert any(p.name == "node.duckdb" for p in files)
    for path in files:
        content = path.read_bytes()
        for what, needle in needles.items():
            assert needle not in content, f"{what} found in {path}"
    # The access log ran, as a tally flushed at shutdown: a count, no line per request.
    tallies = [json.loads(line) for line in log.read_text().splitlines() if '"requests"' in line]
    assert {(t["route"], t["status"], t["count"]) for t in tallies} >= {("/v1/events", 202, 2), ("/v1/events", 400, 4)}


async def _post_batches(url: str, acked: set[int], sent: set[int], stop: asyncio.Event, worker: int) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        n = worker
        while not stop.is_set():
            batch = [event(f"crash-{n:06d}-{i:03d}") for i in range(100)]
            sent.add(n)
            try:
                async with session.post(url + "/v1/events", json=batch) as resp:
                    if resp.status == 202:
                        acked.add(n)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                return  # the server died mid-request: this batch was never acked
            n += 4


@pytest.mark.slow
async def test_sigkill_loses_no_acknowledged_event(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    proc = start_node(data_dir, tmp_path / "first.log")
    acked: set[int] = set()
    sent: set[int] = set()
    stop = asyncio.Event()
    workers = [asyncio.create_task(_post_batches(proc.url, acked, sent, stop, w)) for w in range(4)]
    deadline = asyncio.get_running_loop().time() + 20
    while len(acked) < 40 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    proc.kill()  # mid-load: requests are in flight
    stop.set()
    await asyncio.gather(*workers)
    assert len(acked) >= 40

    restarted = start_node(data_dir, tmp_path / "second.log")
    async with aiohttp.ClientSession() as session:
        async with session.post(restarted.url + "/v1/events", json=[event("after-restart-1")]) as resp:
            assert resp.status == 202
    assert restarted.stop() == 0

    salts = [p.read_bytes() for p in (data_dir / "salts").glob("*.salt")]
    con = duckdb.connect(str(data_dir / "node.duckdb"), read_only=True)
    counts = dict(con.execute("SELECT session, count(*) FROM events GROUP BY 1").fetchall())
    con.close()

    def stored(n: int) -> list[int]:
        out = []
        for i in range(100):
            key = f"crash-{n:06d}-{i:03d}".encode()
            out.append(sum(counts.get(session_hash(s, key), 0) for s in salts))
        return out

    for n in acked:
        assert stored(n) == [1] * 100, f"acked batch {n} not stored exactly once"
    for n in sent - acked:
        assert stored(n) in ([0] * 100, [1] * 100), f"batch {n} stored partly"


def test_import_cli_backfills_past_windows(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    lines = []
    for day in range(1, 4):
        for i in range(10):
            ts = (today - timedelta(days=day)).isoformat()
            lines.append(json.dumps(event(f"imp-{day}-{i:04d}", timestamp=ts)))
    lines.append(json.dumps(event("imp-late-0001", timestamp=(today - timedelta(days=40)).isoformat())))
    lines.append(json.dumps(event("imp-bad-00001", app="unknown-app")))
    lines.append("{not json")
    lines.append("")
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(lines) + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "liberation", "node", "import", str(source), "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=120, check=True,
    )
    assert "read 33 lines: 30 events accepted, 3 rejected" in result.stdout
    assert "window-closed" in result.stdout and "undeclared-app" in result.stdout and "malformed-json" in result.stdout
    con = duckdb.connect(str(data_dir / "node.duckdb"), read_only=True)
    windows = con.execute("SELECT count(DISTINCT window_start), count(*) FROM events").fetchall()
    tables = {name for (name,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    con.close()
    assert windows == [(3, 30)]
    # The import folded its per-event session rows: per-session first/last minutes only.
    assert not any(name.startswith("session_log_") for name in tables)
    assert sum(name.startswith("sessions_") for name in tables) == 3
    # Stdin works too.
    again = subprocess.run(
        [sys.executable, "-m", "liberation", "node", "import", "-", "--data-dir", str(data_dir)],
        input=lines[0] + "\n", capture_output=True, text=True, timeout=120, check=True,
    )
    assert "1 events accepted" in again.stdout
