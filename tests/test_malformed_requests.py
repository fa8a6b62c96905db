"""Malformed HTTP from raw sockets against `liberation hub serve` and `node serve`: a clear 4xx, no traceback logged."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from protocol.errors import PROBLEM_BASE, PROBLEM_CONTENT_TYPE
from tests.servers import Process, admin_token

# Requests aiohttp's own parser refuses (it answers 400 before any route or middleware runs).
MALFORMED = [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",  # a NUL in a header value
    b"GARBAGE\r\n\r\n",  # not a request line
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",  # a header without a colon
]


async def exchange(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes on a fresh connection; the status, headers and body of the answer."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def assert_quiet_log(log: Path) -> list[dict[str, object]]:
    """No traceback, no error line and no address in a stopped server's log; its lines, parsed."""
    text = log.read_text()
    assert "Traceback" not in text and 'File \\"' not in text, text
    assert "AssertionError" not in text and "Unhandled" not in text, text
    assert "127.0.0.1" not in text.replace('"url": "http://127.0.0.1', "").replace('"metrics_url": "http://127.0.0.1', ""), text
    entries = [json.loads(line) for line in text.splitlines()]
    assert [e for e in entries if e["level"] in ("error", "critical")] == []
    return entries


def tallied(entries: list[dict[str, object]], route: str, status: int) -> int:
    return sum(
        int(str(e["count"])) for e in entries if e["message"] == "requests" and e["route"] == route and e["status"] == status
    )


async def test_hub_admin_with_a_non_utf8_token_is_401_and_malformed_requests_400(tmp_path: Path) -> None:
    """Review L6: `Bearer \\xff\\xfe` gave 500 (UnicodeEncodeError); a NUL in a header an AssertionError in the tally."""
    token = admin_token()
    env = {"LIBERATION_HUB_DATA_DIR": str(tmp_path / "hub"), "LIBERATION_HUB_PORT": "0", "LIBERATION_HUB_ADMIN_TOKEN": token}
    hub = Process(["hub", "serve"], tmp_path / "hub.log", env)
    try:
        for authorization in (b"Bearer \xff\xfe", b"Bearer " + token.encode() + b"\xe9", b"\xc3(" + token.encode()):
            request = b"GET /v1/admin/nodes HTTP/1.1\r\nHost: x\r\nAuthorization: " + authorization + b"\r\n\r\n"
            status, headers, body = await exchange(hub.url, request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
            assert status == 401 and headers["content-type"] == PROBLEM_CONTENT_TYPE, body
            assert json.loads(body)["type"] == PROBLEM_BASE + "unauthorized"
        for raw in MALFORMED:
            status, _, _ = await exchange(hub.url, raw)
            assert status == 400, raw
        # The hub still serves, and the right token still works.
        request = f"GET /v1/admin/nodes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        status, _, body = await exchange(hub.url, request.encode())
        assert status == 200 and json.loads(body) == {"nodes": []}
    finally:
        assert hub.stop() == 0
    entries = assert_quiet_log(tmp_path / "hub.log")
    assert tallied(entries, "/v1/admin/nodes", 401) == 3
    assert tallied(entries, "?", 400) == len(MALFORMED)


async def test_node_answers_malformed_requests_400_without_a_traceback(tmp_path: Path) -> None:
    env = {
        "LIBERATION_NODE_DATA_DIR": str(tmp_path / "node"),
        "LIBERATION_NODE_PORT": "0",
        "LIBERATION_NODE_LOG_LEVEL": "DEBUG",  # even the debug line has no frames and no address
        "LIBERATION_NODE_PLAUSIBLE__DOMAINS": '{"wage.example.org": "real-wage-calculator"}',
    }
    node = Process(["node", "serve"], tmp_path / "node.log", env)
    try:
        for raw in MALFORMED:
            status, _, _ = await exchange(node.url, raw)
            assert status == 400, raw
        # A User-Agent that is not UTF-8 on the Plausible route gave a 500 (UnicodeEncodeError).
        body = b'{"n": "pageview", "u": "https://wage.example.org/", "d": "wage.example.org"}'
        request = (
            b"POST /api/event HTTP/1.1\r\nHost: x\r\nUser-Agent: Agent \xff\xfe\r\nContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        ) + body
        status, _, _ = await exchange(node.url, request)
        assert status == 202
    finally:
        assert node.stop() == 0
    entries = assert_quiet_log(tmp_path / "node.log")
    assert tallied(entries, "?", 400) == len(MALFORMED)
    assert tallied(entries, "/api/event", 202) == 1
