"""Ingest workers (`ingest_workers >= 1`): real processes and real HTTP on 127.0.0.1, real DuckDB files."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import pytest
from aiohttp import web

from node.app import NODE, create_app, start_rows_server
from node.handoff import RowsChannel, encode_rows, rows_socket
from node.privacy import FilteredEvent, window_of
from node.worker import create_worker_app
from tests.servers import Process, node_settings, run_node

PID = re.compile(r'"message": "worker started", "worker": (\d+), "pid": (\d+)')


def event(session_id: str, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "app": "runway-calculator", "action": "calculate", "attributes": {"runway_months": 4},
        "timestamp": datetime.now(UTC).isoformat(), "session_id": session_id,
    }
    data.update(changes)
    return data


def start(data_dir: Path, log: Path, workers: int = 2) -> Process:
    env = {
        "LIBERATION_NODE_DATA_DIR": str(data_dir), "LIBERATION_NODE_PORT": "0",
        "LIBERATION_NODE_RATE_LIMIT__REQUESTS_PER_SECOND": "0", "LIBERATION_NODE_INGEST_WORKERS": str(workers),
    }
    return Process(["node", "serve"], log, env=env)


def worker_pids(log: Path) -> dict[int, int]:
    """Worker index -> pid of its latest start."""
    return {int(i): int(pid) for i, pid in PID.findall(log.read_text())}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purpose: it serves nothing.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


async def wait_until(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_events_land_in_duckdb_and_other_routes_are_proxied(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    proc = start(data_dir, tmp_path / "node.log")
    try:
        async with aiohttp.ClientSession() as http:
            for n in range(20):  # fresh connections: the kernel spreads them over both workers
                async with http.post(proc.url + "/v1/events", json=[event(f"batch-{n:03d}-{i:03d}") for i in range(50)],
                                     headers={"Connection": "close"}) as resp:
                    assert resp.status == 202
                    assert await resp.json() == {"accepted": 50, "dropped_attributes": 0}
            async with http.post(proc.url + "/v1/events", json=event("bad-app-0001", app="nope")) as resp:
                assert resp.status == 422
            async with http.get(proc.url + "/healthz") as resp:
                assert resp.status == 200 and (await resp.json())["status"] == "ok"
            async with http.get(proc.url + "/v1/catalog") as resp:
                assert resp.status == 200 and "Cache-Control" in resp.headers
            async with http.get(proc.url + "/js/liberation.js") as resp:
                assert resp.status == 200 and resp.content_type == "application/javascript"

            async def metrics() -> str:
                async with http.get(proc.url + "/metrics") as resp:
                    assert resp.status == 200
                    return await resp.text()

            deadline = time.monotonic() + 10  # workers ship their counts every second
            while True:
                text = await metrics()
                if "liberation_events_accepted_total 1000.0" in text and \
                        'liberation_events_rejected_total{reason="undeclared-app"} 1.0' in text:
                    break
                assert time.monotonic() < deadline, text
                await asyncio.sleep(0.2)
            assert "liberation_rows 1000.0" in text
        assert len(worker_pids(tmp_path / "node.log")) == 2
    finally:
        assert proc.stop() == 0
    con = duckdb.connect(str(data_dir / "node.duckdb"), read_only=True)
    assert con.execute("SELECT count(*), count(DISTINCT session) FROM events").fetchall() == [(1000, 1000)]
    con.close()
    assert not (data_dir / "ingest.sock").exists()
    assert "203.0.113" not in (tmp_path / "node.log").read_text()


BAD_REQUESTS: list[tuple[str, str, dict[str, str], bytes]] = [
    ("POST", "/v1/events", {"Content-Type": "application/json"}, b"{bad"),
    ("POST", "/v1/events", {"Content-Type": "application/json"}, json.dumps([event("short")]).encode()),
    ("POST", "/v1/events", {"Content-Type": "application/xml"}, b"<a/>"),
    ("POST", "/v1/events", {"Content-Type": "application/json"}, json.dumps(event("future-0001", timestamp="2001-01-01T00:00:00Z")).encode()),
    ("POST", "/v1/events?partial=1", {"Content-Type": "application/json"}, json.dumps([event("unknown-01", app="nope")]).encode()),
    ("POST", "/api/event", {"Content-Type": "text/plain"}, b"[]"),
    ("GET", "/v1/events", {}, b""),
    ("GET", "/no/such/route", {}, b""),
    ("GET", "/_internal/salt/0", {}, b""),
    ("POST", "/_internal/counts", {}, b"{}"),
    ("GET", "/v1/snapshots/not-a-window", {}, b""),
    ("OPTIONS", "/v1/events", {"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "POST"}, b""),
]


async def _answers(url: str) -> list[tuple[int, str, Any]]:
    out = []
    async with aiohttp.ClientSession() as http:
        for method, path, headers, body in BAD_REQUESTS:
            async with http.request(method, url + path, headers=headers, data=body or None) as resp:
                text = await resp.text()
                out.append((resp.status, resp.headers.get("Content-Type", ""), json.loads(text) if text.startswith("{") else text))
    return out


async def test_errors_are_the_same_problems_as_one_process(tmp_path: Path) -> None:
    async with run_node(node_settings(tmp_path / "single")) as single:
        expected = await _answers(single.url)
    proc = start(tmp_path / "node", tmp_path / "node.log")
    try:
        assert await _answers(proc.url) == expected
    finally:
        assert proc.stop() == 0


class MovableClock:
    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@asynccontextmanager
async def main_and_worker(tmp_path: Path, clock: MovableClock) -> AsyncIterator[tuple[str, web.Application]]:
    """The main app on its Unix socket and one worker app on 127.0.0.1:0, in this process."""
    settings = node_settings(tmp_path / "node", ingest_workers=1)
    main = create_app(settings, clock=clock, handoff=True)
    main_runner = web.AppRunner(main, access_log=None)
    await main_runner.setup()
    socket = tmp_path / "main.sock"
    await web.UnixSite(main_runner, str(socket)).start()
    rows = await start_rows_server(main, rows_socket(socket))
    worker_runner = web.AppRunner(create_worker_app(settings, socket), access_log=None)
    await worker_runner.setup()
    await web.TCPSite(worker_runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{worker_runner.addresses[0][1]}", main
    finally:
        await worker_runner.cleanup()
        rows.close()
        await rows.wait_closed()
        await main_runner.cleanup()


async def test_the_rows_socket_commits_good_frames_and_refuses_others(tmp_path: Path) -> None:
    clock = MovableClock()
    async with main_and_worker(tmp_path, clock) as (_, main):
        node = main[NODE]
        layout = node.store.layout
        now = clock()
        good = layout.table([layout.block([
            FilteredEvent(window_of(now, 86_400), now.replace(minute=0, second=0, microsecond=0), 3, 77, "runway-calculator", "start", "DE", {})
        ])])
        channel = RowsChannel(rows_socket(tmp_path / "main.sock"))
        try:
            assert await channel.send(b"{}", encode_rows(good)) == (200, b'{"closed": []}')
            other = good.drop_columns(["a_industry"])  # a worker of another catalog
            assert (await channel.send(b"{}", encode_rows(other)))[0] == 400
            assert (await channel.send(b"{}", b"not arrow"))[0] == 400
            assert (await channel.send(b"\xff", encode_rows(good)))[0] == 400  # counts that are not UTF-8 JSON
            # A frame that is not one: answered 400, and the connection closes.
            reader, writer = await asyncio.open_unix_connection(str(rows_socket(tmp_path / "main.sock")))
            writer.write(b"GET / HTTP/1.1\r\n\r\n")
            assert (await reader.read()).startswith(b"\x90\x01")
            writer.close()
            assert node.store.row_count() == 1  # the good frame's row, nothing of the others
            # The channel reconnects after the main closed its connection.
            assert (await channel.send(b"{}", encode_rows(good)))[0] == 200
            assert node.store.row_count() == 2
        finally:
            channel.close()


async def test_exported_window_refuses_events_despite_a_cached_salt(tmp_path: Path) -> None:
    clock = MovableClock()
    async with main_and_worker(tmp_path, clock) as (url, main), aiohttp.ClientSession() as http:
        async with http.post(url + "/v1/events", json=[event("before-export")]) as resp:
            assert resp.status == 202  # the worker now holds today's salt
        async with http.post(url + "/v1/events?partial=1", json=[event("before-export-2")]) as resp:
            assert resp.status == 202
        clock.offset = timedelta(days=2)  # the main's clock only: today's window is now closed
        node = main[NODE]
        await asyncio.to_thread(node.export_due)
        assert node.salt_for(datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)) is None
        async with http.post(url + "/v1/events", json=[event("after-export-1"), event("after-export-2")]) as resp:
            assert resp.status == 422
            problem = await resp.json()
        async with http.post(url + "/v1/events?partial=1", json=[event("after-export-3"), event("unknown-app-01", app="nope")]) as resp:
            assert resp.status == 422
            partial = await resp.json()
        rows = node.store.row_count()
    assert problem["type"].endswith("/window-closed")
    assert [(e["index"], e["field"], e["reason"]) for e in problem["errors"]] == [(0, "timestamp", "window-closed"), (1, "timestamp", "window-closed")]
    assert partial["type"].endswith("/nothing-accepted")
    assert [r["reason"] for r in partial["results"]] == ["window-closed", "undeclared-app"]
    assert rows == 2  # the two from before the export, nothing after


@pytest.mark.slow
async def test_a_dead_worker_is_replaced(tmp_path: Path) -> None:
    log = tmp_path / "node.log"
    proc = start(tmp_path / "node", log)
    try:
        await wait_until(lambda: log.read_text().count('"worker ready"') == 2)
        victim = worker_pids(log)[0]
        os.kill(victim, signal.SIGKILL)
        await wait_until(lambda: worker_pids(log)[0] != victim)
        replacement = worker_pids(log)[0]
        await wait_until(lambda: log.read_text().count('"worker ready"') >= 3)
        assert alive(replacement)
        async with aiohttp.ClientSession() as http:
            for n in range(10):
                async with http.post(proc.url + "/v1/events", json=[event(f"after-death-{n:03d}")],
                                     headers={"Connection": "close"}) as resp:
                    assert resp.status == 202
    finally:
        assert proc.stop() == 0


@pytest.mark.slow
async def test_workers_exit_when_the_main_process_is_killed(tmp_path: Path) -> None:
    log = tmp_path / "node.log"
    proc = start(tmp_path / "node", log)
    await wait_until(lambda: log.read_text().count('"worker ready"') == 2)
    pids = list(worker_pids(log).values())
    assert all(alive(p) for p in pids)
    proc.kill()  # SIGKILL: no chance to stop them
    await wait_until(lambda: not any(alive(p) for p in pids))
