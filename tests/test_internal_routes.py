"""No internal route is reachable from a public port, whatever the path's spelling (raw sockets).

The operator's commands (budget, enroll, ...) are served on the admin socket's routing table only.

Exact metrics (`/metrics`) move with each visit; the node's salts and counters were once served
to an ingest tier. Both live on no public routing table: the metrics on a listener of their own.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from federation.admin import HUB_OPERATIONS
from federation.settings import HubSettings
from node.admin import NODE_OPERATIONS
from tests.servers import node_settings, run_hub, run_node

SPELLINGS = (
    "/{p}",
    "/x/../{p}",
    "/./{p}",
    "/%2e/{p}",
    "/x/%2e%2e/{p}",
    "/v1/../{p}",
    "//{p}",
    "/v1/%2E%2E/{p}",
    "/v1/..%2f{p}",
    "/%2f{p}",
)


async def raw_status(url: str, method: str, target: str, body: bytes = b"") -> int:
    """Send the request line as written (no client normalises it) and return the answer's status."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
    return int(status_line.split()[1])


def internal_paths() -> list[tuple[str, str, bytes]]:
    future = int((datetime.now(UTC) + timedelta(days=400)).timestamp()) // 86_400 * 86_400
    return [
        ("GET", "metrics", b""),
        ("GET", f"_internal/salt/{future}", b""),
        ("POST", "_internal/counts", b'{"liberation_node_events_accepted": 1000000}'),
    ] + [("POST", op.name, b"{}") for op in NODE_OPERATIONS]  # the admin socket's: on its own routing table


@pytest.mark.parametrize("spelling", SPELLINGS)
async def test_the_node_serves_no_internal_route_on_its_public_port(tmp_path: Path, spelling: str) -> None:
    async with run_node(node_settings(tmp_path / "node")) as node:
        salts = sorted(p.name for p in (tmp_path / "node" / "salts").iterdir())
        for method, path, body in internal_paths():
            target = spelling.format(p=path)
            assert await raw_status(node.url, method, target, body) in (400, 404), target
        assert sorted(p.name for p in (tmp_path / "node" / "salts").iterdir()) == salts


@pytest.mark.parametrize("spelling", SPELLINGS)
async def test_the_hub_serves_no_metrics_on_its_public_port(tmp_path: Path, spelling: str) -> None:
    async with run_hub(HubSettings(data_dir=tmp_path / "hub", port=0, metrics_port=0)) as hub:
        assert await raw_status(hub.url, "GET", spelling.format(p="metrics")) in (400, 404)
        for op in HUB_OPERATIONS:  # the admin socket's, and only there
            assert await raw_status(hub.url, "POST", spelling.format(p=op.name), b"{}") in (400, 404), op.name


async def test_metrics_have_their_own_loopback_listener_and_routes(tmp_path: Path) -> None:
    async with (
        run_node(node_settings(tmp_path / "node")) as node,
        run_hub(HubSettings(data_dir=tmp_path / "hub", port=0, metrics_port=0)) as hub,
        aiohttp.ClientSession() as session,
    ):
        pairs = ((node, "liberation_node_events_accepted_total"), (hub, "liberation_hub_snapshots_accepted_total"))
        for service, prefix in pairs:
            assert service.metrics_url.startswith("http://127.0.0.1:") and service.metrics_url != service.url
            async with session.get(service.metrics_url + "/metrics") as resp:
                assert resp.status == 200 and prefix in await resp.text()
            # The metrics listener's routing table holds /metrics and nothing else.
            for path in ("/healthz", "/v1/events", "/v1/views", "/"):
                async with session.get(service.metrics_url + path) as resp:
                    assert resp.status == 404, path


def test_metrics_default_to_loopback_on_a_port_of_their_own() -> None:
    node, hub = node_settings(Path("x"), metrics_port=9701), HubSettings()
    assert (node.metrics_host, hub.metrics_host) == ("127.0.0.1", "127.0.0.1")
    assert hub.metrics_port not in (None, hub.port) and node.metrics_port != node.port
