"""Idle connections: a cap under the open-file limit keeps a node answering, and its log small.

A whole `liberation node serve` process with 256 open files (soft and hard, as a tight
systemd or container limit would give) and `max_connections` 50: 400 idle sockets, more
than the process could hold, must not stop a normal request, nor write a line each.
Before the cap, the node stalled about 20 s with 157,000 lines of accept() tracebacks.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.servers import Process

CAP = 50
OPEN_FILES = 256
IDLE = 400


def low_open_file_limit() -> None:
    """In the child only: a hard limit too, so the node cannot raise it back."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def metrics(proc: Process) -> str:
    async with aiohttp.ClientSession() as session, session.get(proc.metrics_url + "/metrics") as resp:
        return await resp.text()


async def until_open(proc: Process, at_most: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while metric(await metrics(proc), "liberation_node_connections_open") > at_most:
        assert time.monotonic() < deadline, "connections the clients closed are still counted"
        await asyncio.sleep(0.05)


async def until_closed_idle(proc: Process, at_least: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while metric(await metrics(proc), 'liberation_node_connections_closed_total{reason="idle"}') < at_least:
        assert time.monotonic() < deadline, "the node did not take more connections than it has descriptors"
        await asyncio.sleep(0.05)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Process]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < IDLE + 200:  # the test's own sockets
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(IDLE + 200, hard), hard))
    proc = Process(["node", "serve"], tmp_path / "node.log", env={
        "LIBERATION_NODE_DATA_DIR": str(tmp_path / "node"), "LIBERATION_NODE_PORT": "0",
        "LIBERATION_NODE_RATE_LIMIT__REQUESTS_PER_SECOND": "0", "LIBERATION_NODE_MAX_CONNECTIONS": str(CAP),
    }, preexec_fn=low_open_file_limit)
    yield proc
    proc.stop()


def event() -> dict[str, object]:
    return {"app": "runway-calculator", "action": "calculate", "attributes": {},
            "timestamp": datetime.now(UTC).isoformat(), "session_id": "session-normal"}


async def test_idle_sockets_past_the_open_file_limit_leave_requests_served(node: Process) -> None:
    parts = urlsplit(node.url)
    assert parts.hostname == "127.0.0.1" and parts.port is not None
    before = open_files(node.proc.pid)
    idle: list[asyncio.StreamWriter] = []
    try:
        for _ in range(IDLE):
            _, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, parts.port), 5)
            idle.append(writer)
        # Accepted more than its descriptors could hold (some of the 400 may still wait in the
        # kernel's queue on a busy machine): each past the cap closed an idle one.
        await until_closed_idle(node, OPEN_FILES - CAP)
        held = open_files(node.proc.pid)
        started = time.monotonic()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async with session.post(node.url + "/v1/events", json=[event()]) as resp:
                status = resp.status
        seconds = time.monotonic() - started
        text = await metrics(node)
    finally:
        for writer in idle:
            writer.close()
    assert status == 202 and seconds < 1.0, (status, seconds)
    assert held <= before + CAP + 2, (before, held)  # never more sockets than the cap
    assert metric(text, "liberation_node_connections_max") == CAP
    assert metric(text, 'liberation_node_connections_closed_total{reason="idle"}') >= OPEN_FILES - CAP
    node.stop()
    lines = node.log_path.read_text().splitlines()
    assert len(lines) < 20, lines[:5]
    for line in lines:
        json.loads(line)  # JSON, like every line of ours: no multi-line traceback
    assert not [line for line in lines if "accept" in line], "accept() never failed"


async def test_at_the_cap_with_every_request_in_flight_a_newcomer_is_closed_at_once(node: Process) -> None:
    parts = urlsplit(node.url)
    assert parts.hostname == "127.0.0.1" and parts.port is not None
    head = (
        b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n["
    )
    busy: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(CAP):  # each waits for the rest of its body: a request in flight
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
            writer.write(head)
            await writer.drain()
            busy.append((reader, writer))
        await asyncio.sleep(0.5)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        started = time.monotonic()
        closed = await asyncio.wait_for(reader.read(), 5)
        seconds = time.monotonic() - started
        writer.close()
        text = await metrics(node)
        cut = [r for r, _ in busy if r.at_eof()]
    finally:
        for _, w in busy:
            w.close()
    assert closed == b"" and seconds < 1.0, seconds
    assert not cut, "a request in flight was cut to make room"
    assert metric(text, 'liberation_node_connections_closed_total{reason="full"}') >= 1
    assert metric(text, 'liberation_node_connections_closed_total{reason="idle"}') == 0
    await until_open(node, 0)  # the clients hung up: nothing stays counted


# ---- accept() failing all the same: one line a period, with a count --------------------------------

ACCEPTOR = """
import asyncio, logging, resource, sys
from runtime.logs import configure_logging
from runtime.connections import AcceptErrorLog

resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))
configure_logging("INFO")

async def main() -> None:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(AcceptErrorLog(logging.getLogger("liberation.server"), every_seconds=1.0))
    held = []

    class Hold(asyncio.Protocol):
        def connection_made(self, transport):
            held.append(transport)

    server = await loop.create_server(Hold, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.sleep(float(sys.argv[1]))

asyncio.run(main())
"""


async def test_accept_errors_are_one_line_a_period_with_a_count() -> None:
    """A bare asyncio server out of descriptors: asyncio's records become a JSON line a second."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ACCEPTOR, "3.5",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None and child.stderr is not None
    port = int(await asyncio.wait_for(child.stdout.readline(), 30))
    sockets = []
    try:
        for _ in range(120):  # past its 48 descriptors; the rest wait in the listen queue
            try:
                sockets.append(await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1))
            except TimeoutError:
                break
        err = (await asyncio.wait_for(child.stderr.read(), 30)).decode()
    finally:
        for _, writer in sockets:
            writer.close()
        await child.wait()
    lines = err.splitlines()
    records = [json.loads(line) for line in lines]  # every line JSON: no plain-text traceback
    assert records and all(r["message"].startswith("accept() failed") for r in records), err[:2000]
    assert records[0]["count"] == 1 and records[0]["error"] == "EMFILE"
    assert len(records) <= 5  # the first at once, then one a second while they last (3.5 s)
    assert sum(r["count"] for r in records) > len(records), "asyncio reported more failures than lines"
    assert "127.0.0.1" not in err and "laddr" not in err
