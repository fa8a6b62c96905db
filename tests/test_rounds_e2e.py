"""A federation round through real processes: a hub, two share keepers, five nodes, on loopback.

Four nodes contribute yesterday's window; one keeper is killed (SIGKILL) while the round is
open, and the hub is killed while the round waits for it; both come back and the round is
published: equal, cell for cell, to the nodes' exact bounded counts plus the noise each keeper
committed (recovered from its answer and the seeds only it can open). The fifth node comes
after the deadline and is out (409), counted nowhere. Then the keepers and the hub are
attacked: a second participant set, a forged, an unenrolled, a replayed contribution, a
contribution of another round; and the log audit recomputes the round from its signed parts.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from protocol.catalog import load_catalog
from protocol.errors import PROBLEM_BASE
from protocol.keys import SigningKey
from protocol.rounds import (
    RoundRequest,
    build_contribution,
    mask,
    open_seed,
    seal_info,
    sign_request,
    vector_of,
    verify_answer,
    verify_contribution,
)
from tests.servers import Process, admin_token

CATALOG = load_catalog()
TOKEN = admin_token()
NODES = 5
DAY = 86_400


def free_port() -> int:
    """A port free now, for a keeper that must come back on the URL the hub enrolled."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def history(node: int, sessions: int, day: datetime) -> list[str]:
    country = ["DE", "KE", "BR", "IN", "FR"][node]
    apps = [("runway-calculator", "calculate", {"runway_months": 6, "industry": "tech"}),
            ("real-wage-calculator", "reveal", {"salary": 52_000, "real_wage_gap_pct": 18}),
            ("cognitive-debt-assessment", "complete", {"debt_level": "high"})]
    lines = []
    for s in range(sessions):
        app, action, attrs = apps[(s + node) % 3]
        ts = day + timedelta(minutes=(s * 7) % 1400)
        for step, act in enumerate(("start", action)):
            lines.append(json.dumps({
                "app": app, "action": act, "attributes": attrs if act == action else {},
                "timestamp": (ts + timedelta(minutes=step)).isoformat(), "geo_hint": country,
                "session_id": f"n{node}-s{s:05d}",
            }))
    return lines


def prepare_node(data: Path, node: int, day: datetime) -> tuple[str, np.ndarray]:
    """Import a day of history through the node's own import path; the node's public key and its bounded
    true vector of the day (computed by the export's own code, before the export drops the session state)."""
    from node.aggregate import true_tables
    from node.importer import import_lines
    from node.service import close_node, open_node
    from node.settings import NodeSettings
    from protocol.rounds import federation_vector

    opened = open_node(NodeSettings(data_dir=data))
    try:
        import_lines(opened, history(node, 40 + 15 * node, day))
        opened.store.drain()
        opened.store.fold_sessions()
        tables = true_tables(opened.store.cursor(), CATALOG, int(day.timestamp()))
        return opened.key.public.b64, np.array(federation_vector(CATALOG, tables), dtype=np.int64)
    finally:
        close_node(opened)


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float = 90.0, what: str = "") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.2)


def hub_env(root: Path) -> dict[str, str]:
    return {"LIBERATION_HUB_DATA_DIR": str(root / "hub"), "LIBERATION_HUB_PORT": "0", "LIBERATION_HUB_ADMIN_TOKEN": TOKEN,
            "LIBERATION_HUB_ROUNDS__CLOSE_AFTER_SECONDS": "0", "LIBERATION_HUB_ROUNDS__COLLECT_SECONDS": "8",
            "LIBERATION_HUB_ROUNDS__INTERVAL_SECONDS": "0.2", "LIBERATION_HUB_ROUNDS__KEEPER_TIMEOUT_SECONDS": "5"}


def keeper_env(root: Path, k: int, port: int, hub_key: str) -> dict[str, str]:
    return {"LIBERATION_KEEPER_DATA_DIR": str(root / f"keeper{k}"), "LIBERATION_KEEPER_PORT": str(port),
            "LIBERATION_KEEPER_METRICS_PORT": "0", "LIBERATION_KEEPER_ADMIN_TOKEN": TOKEN,
            "LIBERATION_KEEPER_HUB_KEYS": json.dumps([hub_key])}


def node_env(root: Path, i: int, hub_url: str, keepers: list[str]) -> dict[str, str]:
    return {"LIBERATION_NODE_DATA_DIR": str(root / f"node{i}"), "LIBERATION_NODE_PORT": "0",
            "LIBERATION_NODE_PUSH__HUB_URL": hub_url, "LIBERATION_NODE_PUSH__INTERVAL_SECONDS": "0.2",
            "LIBERATION_NODE_PUSH__MIN_BACKOFF_SECONDS": "0.2", "LIBERATION_NODE_EXPORT_GRACE_SECONDS": "0",
            "LIBERATION_NODE_EXPORT_INTERVAL_SECONDS": "0.5", "LIBERATION_NODE_ROUNDS__KEEPERS": json.dumps(keepers)}


@pytest.mark.slow
async def test_a_round_survives_dropouts_and_kills_and_equals_the_true_sum_plus_committed_noise(tmp_path: Path) -> None:
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    window = int(day.timestamp())
    prepared = [prepare_node(tmp_path / f"node{i}", i, day) for i in range(NODES)]
    publics = [public for public, _ in prepared]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    procs: dict[str, Process] = {}
    ports = [free_port(), free_port()]

    def start(name: str, args: list[str], env: dict[str, str]) -> Process:
        procs[name] = Process(args, tmp_path / f"{name}.log", env=env)
        return procs[name]

    try:
        hub = start("hub", ["hub", "serve"], hub_env(tmp_path))
        hub_key = (tmp_path / "hub" / "keys" / "signing.pub").read_text().strip()
        keepers = list(await asyncio.gather(*(asyncio.to_thread(start, f"keeper{k}", ["keeper", "serve"],
                                                                 keeper_env(tmp_path, k, ports[k], hub_key))
                                               for k in range(2))))
        async with aiohttp.ClientSession() as http:

            async def call(method: str, url: str, **kw: Any) -> tuple[int, Any]:
                async with http.request(method, url, **kw) as resp:
                    body = await resp.read()
                    try:
                        return resp.status, json.loads(body)
                    except ValueError:
                        return resp.status, body

            keeper_ids = []
            for k, keeper in enumerate(keepers):
                status, ident = await call("GET", keeper.url + "/v1/keeper")
                keeper_ids.append(ident["key_id"])
                status, body = await call("POST", hub.url + "/v1/admin/nodes", headers=auth, json={
                    "name": f"keeper-{k}", "public_key": ident["public_key"], "kind": "keeper", "url": keeper.url})
                assert status == 201, body
                for i, public in enumerate(publics):
                    status, _ = await call("POST", keeper.url + "/v1/admin/nodes", headers=auth,
                                           json={"name": f"community-{i}", "public_key": public})
                    assert status == 201
            for i, public in enumerate(publics):
                status, _ = await call("POST", hub.url + "/v1/admin/nodes", headers=auth,
                                       json={"name": f"community-{i}", "public_key": public})
                assert status == 201
            # Started together (each process takes a few seconds to come up): all four within the collection time.
            await asyncio.gather(*(asyncio.to_thread(start, f"node{i}", ["node", "serve"],
                                                     node_env(tmp_path, i, hub.url, keeper_ids))
                                   for i in range(NODES - 1)))

            async def rounds() -> list[dict[str, Any]]:
                return list((await call("GET", procs["hub"].url + "/v1/rounds"))[1]["rounds"])

            async def contributed() -> bool:
                return await _count(call, procs["hub"].url, window) == NODES - 1

            await wait_for(contributed, what="four contributions")
            # A keeper dies mid-round (SIGKILL): the round closes and waits for it.
            procs["keeper1"].kill()
            await wait_for(lambda: _state(rounds, "closed"), what="the round to close")
            # The hub dies too while the round waits; it comes back from its database.
            procs["hub"].kill()
            hub = start("hub", ["hub", "serve"], hub_env(tmp_path))
            await asyncio.sleep(1.0)
            assert (await rounds())[0]["state"] == "closed"
            keepers[1] = start("keeper1", ["keeper", "serve"], keeper_env(tmp_path, 1, ports[1], hub_key))
            await wait_for(lambda: _state(rounds, "published"), what="the round to be published")

            # The late fifth node is out: its contribution is refused, the round is not changed.
            late = start("node4", ["node", "serve"], node_env(tmp_path, 4, hub.url, keeper_ids))

            async def late_refused() -> bool:
                status, body = await call("GET", late.url + "/v1/contributions")
                async with http.get(procs["hub"].metrics_url + "/metrics") as resp:
                    metrics = await resp.text()
                return (status == 200 and len(body["contributions"]) == 1
                        and 'liberation_hub_contributions_rejected_total{reason="round-closed"} 1.0' in metrics)

            await wait_for(late_refused, what="the late node's contribution to be refused")

            status, doc = await call("GET", hub.url + f"/v1/rounds/{window}")
            assert status == 200 and doc["state"] == "published"
            assert [p["node"] for p in doc["participants"]] == sorted(p["node"] for p in doc["participants"])
            assert len(doc["participants"]) == NODES - 1 and len(doc["answers"]) == 2
            aggregate = np.array(doc["aggregate"], dtype=np.int64)
            # Exact: sum of the true bounded vectors + the noise each keeper committed, nothing lost or doubled.
            truth = sum(x for _, x in prepared[: NODES - 1])
            noise = [committed_noise(tmp_path / f"keeper{k}", doc, keeper_ids[k]) for k in range(2)]
            assert np.array_equal(aggregate, truth + noise[0] + noise[1])
            assert truth.sum() > 0 and all(np.abs(z).sum() > 0 for z in noise)
            assert not np.array_equal(noise[0], noise[1])

            # Keeper answers: once per round, the same bytes again; another set refused.
            envelopes = [_b64(p["contribution"]) for p in doc["participants"]]
            hub_signing = SigningKey.load(tmp_path / "hub" / "keys" / "signing.key")

            def request(parts: list[bytes], start_: int = window) -> bytes:
                return sign_request(RoundRequest(CATALOG.hash, start_, start_ + DAY, tuple(parts)), hub_signing)

            answer0 = next(_b64(a["answer"]) for a in doc["answers"] if a["keeper"] == keeper_ids[0])
            k0 = procs["keeper0"]
            status, again = await call("POST", k0.url + "/v1/rounds/answer", data=request(envelopes),
                                       headers={"Content-Type": "application/msgpack"})
            assert (status, again) == (200, answer0)
            status, body = await call("POST", k0.url + "/v1/rounds/answer", data=request(envelopes[:3]),
                                      headers={"Content-Type": "application/msgpack"})
            assert (status, body["type"]) == (409, PROBLEM_BASE + "round-already-answered")
            # A contribution of this round offered for another round.
            status, body = await call("POST", k0.url + "/v1/rounds/check", data=request(envelopes, window - DAY),
                                      headers={"Content-Type": "application/msgpack"})
            assert (status, body["type"]) == (422, PROBLEM_BASE + "wrong-round")

            # The hub: a replay changes nothing, forged and unenrolled contributions are refused.
            post = {"headers": {"Content-Type": "application/msgpack"}}
            status, body = await call("POST", hub.url + "/v1/contributions", data=envelopes[0], **post)
            assert (status, body["status"]) == (200, "duplicate")
            forged = bytearray(envelopes[0])
            forged[-10] ^= 0x10
            status, body = await call("POST", hub.url + "/v1/contributions", data=bytes(forged), **post)
            assert (status, body["type"]) == (400, PROBLEM_BASE + "invalid-signature")
            stranger = SigningKey.generate()
            statement = verify_contribution(envelopes[0], max_size=1 << 20).contribution
            keys = [_keeper_statement(tmp_path / f"keeper{k}") for k in range(2)]
            foreign = build_contribution(CATALOG, [1] * CATALOG.federation_size, key=stranger, keepers=keys,
                                         window_start=window, window_end=window + DAY, created=statement.created)
            status, body = await call("POST", hub.url + "/v1/contributions", data=foreign, **post)
            assert (status, body["type"]) == (403, PROBLEM_BASE + "unknown-key")
            status, doc_after = await call("GET", hub.url + f"/v1/rounds/{window}")
            assert doc_after["aggregate"] == doc["aggregate"]

        # The log verifies, and every published round is recomputed from its signed parts.
        audit = subprocess.run(
            [sys.executable, "-m", "liberation", "hub", "log", "verify", hub.url, "--key",
             str(tmp_path / "hub" / "keys" / "signing.pub")],
            capture_output=True, text=True, timeout=120,
        )
        assert audit.returncode == 0, audit.stderr
        assert "1 round(s) recomputed from their signed parts" in audit.stdout
    finally:
        for proc in procs.values():
            if proc.proc.poll() is None:
                proc.stop()


async def _count(call: Any, hub_url: str, window: int) -> int:
    status, log = await call("GET", hub_url + "/v1/log?limit=10000")
    return sum(1 for e in log["entries"] if e.get("kind") == "contribution" and e["window_start"] == window)


async def _state(rounds: Callable[[], Awaitable[list[dict[str, Any]]]], state: str) -> bool:
    try:
        rs = await rounds()
    except (aiohttp.ClientError, KeyError):
        return False
    return bool(rs) and rs[0]["state"] == state


def _b64(text: str) -> bytes:
    import base64

    return base64.b64decode(text)


def _keeper_statement(data: Path) -> Any:
    from keeper.identity import load_or_create_identity

    return load_or_create_identity(data).statement


def committed_noise(data: Path, doc: dict[str, Any], keeper_id: str) -> np.ndarray:
    """Z_k = A_k + sum of the masks of the seeds keeper k opens: what it added, from what it signed."""
    from keeper.identity import load_or_create_identity

    identity = load_or_create_identity(data)
    answer = next(verify_answer(_b64(a["answer"]), max_size=1 << 24).answer for a in doc["answers"]
                  if a["keeper"] == keeper_id)
    total = vector_of(answer.a, CATALOG.federation_size).copy()
    for part in doc["participants"]:
        c = verify_contribution(_b64(part["contribution"]), max_size=1 << 20).contribution
        sealed = c.sealed_for(keeper_id)
        assert sealed is not None
        total += mask(open_seed(sealed, identity.sealing, seal_info(c.round, c.node, keeper_id)), CATALOG.federation_size)
    return total.view(np.int64)
