"""Shared fixtures: real node servers on loopback, temporary data dirs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from protocol.errors import PROBLEM_BASE
from tests.servers import RunningNode, node_settings, run_node


class HubStandIn:
    """Answers POST /v1/snapshots with the statuses queued in `answers` (then 202)."""

    def __init__(self) -> None:
        self.answers: list[int | tuple[int, str]] = []  # a status, or a status and a problem type
        self.received: list[bytes] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(await request.read())
        answer = self.answers.pop(0) if self.answers else 202
        if isinstance(answer, tuple):
            status, slug = answer
            body = {"type": PROBLEM_BASE + slug, "title": "Forbidden", "status": status, "detail": f"the hub says {slug}"}
            return web.json_response(body, status=status, content_type="application/problem+json")
        return web.Response(status=answer, text="{}")


@pytest.fixture
async def hub() -> AsyncIterator[tuple[HubStandIn, str]]:
    """A stand-in for a hub's intake on loopback: records what it receives, answers as told."""
    stand_in = HubStandIn()
    app = web.Application()
    app.router.add_post("/v1/snapshots", stand_in.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield stand_in, f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[RunningNode]:
    """A real node on 127.0.0.1:<ephemeral>, with its own data dir."""
    async with run_node(node_settings(tmp_path / "node")) as running:
        yield running


@pytest.fixture(scope="session")
def geoip_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MaxMind-format country database: 203.0.113.0/24 -> DE, 2001:db8::/32 -> BR."""
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    path = tmp_path_factory.mktemp("geoip") / "country.mmdb"
    writer = MMDBWriter(
        ip_version=6, database_type="GeoLite2-Country", languages=["en"], description="test", ipv4_compatible=True
    )
    writer.insert_network(IPSet(["203.0.113.0/24"]), {"country": {"iso_code": "DE"}})
    writer.insert_network(IPSet(["2001:db8::/32"]), {"country": {"iso_code": "BR"}})
    writer.to_db_file(str(path))
    return path
