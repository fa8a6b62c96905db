"""The federation end to end: three node processes and a hub process on loopback.

Events are imported for past days at each node, the nodes export and push
their windows, and the hub's merged cells must equal the sum of what the
nodes published. Then the hub is attacked: a forged, an equivocating, an
unenrolled and a revoked snapshot, and a replay.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from protocol.envelope import sign_snapshot, verify_envelope
from protocol.errors import PROBLEM_BASE
from protocol.keys import SigningKey
from tests.servers import Process, admin_token
from tests.snapshots import node_snapshot

TOKEN = admin_token()
DAYS = 3


def liberation(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(
        [sys.executable, "-m", "liberation", *args], input=stdin, capture_output=True, text=True,
        timeout=120, check=True,
    ).stdout


def history(node: int, sessions: int) -> str:
    """Past days of events: each node its own size, country and tool mix."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    country = ["DE", "KE", "BR"][node]
    apps = [("runway-calculator", "calculate", {"runway_months": 6, "industry": "tech"}),
            ("real-wage-calculator", "reveal", {"salary": 52_000, "real_wage_gap_pct": 18}),
            ("cognitive-debt-assessment", "start", {})]
    lines = []
    for day in range(1, DAYS + 1):
        for s in range(sessions):
            app, action, attrs = apps[(s + node) % 3 if s % 4 else node]
            ts = today - timedelta(days=day) + timedelta(minutes=(s * 7) % 1400)
            for step, act in enumerate(("start", action)):
                lines.append(json.dumps({
                    "app": app, "action": act, "attributes": attrs if act == action else {},
                    "timestamp": (ts + timedelta(minutes=step)).isoformat(), "geo_hint": country,
                    "session_id": f"n{node}-d{day}-s{s:05d}",
                }))
    return "\n".join(lines) + "\n"


async def wait_for(check, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("the federation did not settle in time")
        await asyncio.sleep(0.2)


def sum_published(envelopes: list[bytes]) -> Counter[tuple[str, str, int]]:
    total: Counter[tuple[str, str, int]] = Counter()
    for data in envelopes:
        for name, cells in verify_envelope(data).snapshot.metrics.items():
            for i, v in zip(cells.idx, cells.val, strict=False):
                total[(name, "cell", i)] += v
            for i, v in zip(cells.other_idx, cells.other_val, strict=False):
                total[(name, "other", i)] += v
    return total


@pytest.mark.slow
async def test_three_nodes_and_a_hub(tmp_path: Path) -> None:
    hub = Process(
        ["hub", "serve"],
        tmp_path / "hub.log",
        env={
            "LIBERATION_HUB_DATA_DIR": str(tmp_path / "hub"),
            "LIBERATION_HUB_PORT": "0",
            "LIBERATION_HUB_METRICS_PORT": "0",
            "LIBERATION_HUB_ADMIN_TOKEN": TOKEN,
        },
    )
    nodes: list[Process] = []
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        async with aiohttp.ClientSession() as http:
            for i, sessions in enumerate((900, 500, 250)):
                data = tmp_path / f"node{i}"
                liberation("node", "import", "-", "--data-dir", str(data), stdin=history(i, sessions))
                public = liberation("node", "key", "--data-dir", str(data)).split("public key:")[1].split()[0]
                async with http.post(
                    hub.url + "/v1/admin/nodes", json={"name": f"community-{i}", "public_key": public}, headers=auth
                ) as resp:
                    assert resp.status == 201
            for i in range(3):
                nodes.append(
                    Process(
                        ["node", "serve"],
                        tmp_path / f"node{i}.log",
                        env={
                            "LIBERATION_NODE_DATA_DIR": str(tmp_path / f"node{i}"),
                            "LIBERATION_NODE_PORT": "0",
                            "LIBERATION_NODE_METRICS_PORT": "0",
                            "LIBERATION_NODE_PUSH__HUB_URL": hub.url,
                            "LIBERATION_NODE_PUSH__INTERVAL_SECONDS": "0.2",
                            # No grace: yesterday is closed at start even in the hour after midnight UTC.
                            "LIBERATION_NODE_EXPORT_GRACE_SECONDS": "0",
                        },
                    )
                )

            async def settled() -> bool:
                async with http.get(hub.url + "/v1/windows") as resp:
                    windows = (await resp.json())["windows"]
                return len(windows) == DAYS and all(w["nodes"] == 3 for w in windows)

            await wait_for(settled)

            # Every merged cell is the sum of the three nodes' published cells.
            async with http.get(hub.url + "/v1/windows") as resp:
                days = [w["window_start"] for w in (await resp.json())["windows"]]
            published: dict[str, list[bytes]] = {}
            hub_by_day: dict[str, Counter[tuple[str, str, int]]] = {}
            for day in days:
                published[day] = []
                for node in nodes:
                    async with http.get(f"{node.url}/v1/snapshots/{day}") as resp:
                        assert resp.status == 200
                        published[day].append(await resp.read())
                async with http.get(f"{hub.url}/v1/merged/{day}") as resp:
                    merged = (await resp.json())["metrics"]
                hub_cells = Counter({
                    (name, kind, c["index"]): c["value"]
                    for name, parts in merged.items() for kind, key in (("cell", "cells"), ("other", "other"))
                    for c in parts[key]
                })
                assert hub_cells == sum_published(published[day]), day
                hub_by_day[day] = hub_cells
                assert any(c["nodes"] == 3 for parts in merged.values() for c in parts["cells"])

            async def post(data: bytes) -> tuple[int, dict[str, object]]:
                async with http.post(
                    hub.url + "/v1/snapshots", data=data, headers={"Content-Type": "application/msgpack"}
                ) as resp:
                    return resp.status, json.loads(await resp.text())

            first = published[days[0]][0]
            before = hub_by_day[days[0]]
            # A replay: accepted idempotently, never counted twice.
            assert (await post(first))[0] == 200
            # Forged: one bit of the signature flipped.
            forged = bytearray(first)
            forged[-10] ^= 0x10  # inside the signature (the map ends with "v": 1)
            status, body = await post(bytes(forged))
            assert (status, body["type"]) == (400, PROBLEM_BASE + "invalid-signature")
            # Equivocating: node 0's own key, the same window, other numbers.
            key0 = SigningKey.load(tmp_path / "node0" / "keys" / "signing.key")
            window0 = verify_envelope(first).snapshot.window_start
            status, body = await post(sign_snapshot(node_snapshot(key0, window0, seed=4242), key0))
            assert (status, body["type"]) == (409, PROBLEM_BASE + "equivocation")
            # Unenrolled.
            stranger = SigningKey.generate()
            status, body = await post(sign_snapshot(node_snapshot(stranger, window0), stranger))
            assert (status, body["type"]) == (403, PROBLEM_BASE + "unknown-key")
            # Revoked.
            revoked = SigningKey.generate()
            async with http.post(
                hub.url + "/v1/admin/nodes", json={"name": "leaver", "public_key": revoked.public.b64}, headers=auth
            ) as resp:
                assert resp.status == 201
            async with http.delete(hub.url + "/v1/admin/nodes/leaver", headers=auth) as resp:
                assert resp.status == 200
            status, body = await post(sign_snapshot(node_snapshot(revoked, window0), revoked))
            assert (status, body["type"]) == (403, PROBLEM_BASE + "revoked-key")

            async with http.get(f"{hub.url}/v1/merged/{days[0]}") as resp:
                merged = (await resp.json())["metrics"]
            after = Counter({(n, k, c["index"]): c["value"] for n, p in merged.items()
                             for k, key in (("cell", "cells"), ("other", "other")) for c in p[key]})
            assert after == before  # nothing of the attacks, nor the replay, was merged
            async with http.get(hub.metrics_url + "/metrics") as resp:
                text = await resp.text()
            assert f"liberation_hub_snapshots_accepted_total {3 * DAYS}.0" in text
            assert "liberation_hub_snapshots_duplicate_total 1.0" in text
            for reason in ("invalid-signature", "equivocation", "unknown-key", "revoked-key"):
                assert f'liberation_hub_snapshots_rejected_total{{reason="{reason}"}} 1.0' in text, reason
            async with http.get(hub.url + "/v1/admin/incidents", headers=auth) as resp:
                assert len((await resp.json())["incidents"]) == 1
        # The transparency log verifies from the outside, against the hub's key and each node's ledger.
        audit = ["hub", "log", "verify", hub.url, "--key", str(tmp_path / "hub" / "keys" / "signing.pub"),
                 "--state", str(tmp_path / "log-state.json"), *(a for node in nodes for a in ("--node", node.url))]
        verified = liberation(*audit)
        assert f"{3 * DAYS} entries" in verified and "first check of this hub key" in verified
        assert verified.count(f"{DAYS} snapshot(s), each in the log once") == 3
        assert "it extends the head verified before" in liberation(*audit)
    finally:
        for node in nodes:
            node.stop()
        hub.stop()
