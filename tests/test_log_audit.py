"""`liberation hub log verify`: a pinned hub key, a remembered head, and nodes' own records (review M1).

A real hub and a real node on loopback; the node exports two days and its snapshots are
posted to the hub as its outbox would, beside three of another node. Then the hub's
database is rewritten the way the review did it (an entry dropped, an epsilon divided by
ten, every later hash recomputed, the head signed by the hub's own key): a chain check
alone accepts that log; a remembered head or the node's ledger catches it. Every failure
is one line on stderr and exit code 1, never a traceback or an address.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from federation.settings import HubSettings
from federation.translog import GENESIS, content_of, entry_hash
from node.importer import import_lines
from node.service import close_node, open_node
from protocol.keys import SigningKey
from tests.factories import NOW, WINDOW, ev
from tests.servers import RunningHub, RunningNode, node_settings, run_hub, run_node
from tests.snapshots import DAY, envelope

W = int(WINDOW.timestamp())
Entries = list[dict[str, Any]]


@dataclass
class Federation:
    hub: RunningHub
    node: RunningNode
    key_b64: str  # the hub's public key, as its operator hands it out
    key_file: Path  # the hub's keys/signing.pub
    other: SigningKey  # a second node, posting from tests.snapshots
    tmp: Path

    @property
    def state(self) -> Path:
        return self.tmp / "audit" / "log-state.json"


async def post(hub: RunningHub, data: bytes) -> None:
    async with aiohttp.ClientSession() as s, s.post(
        hub.url + "/v1/snapshots", data=data, headers={"Content-Type": "application/msgpack"}
    ) as resp:
        assert resp.status == 202, await resp.text()


async def node_envelopes(node: RunningNode, count: int) -> list[bytes]:
    """The node's published envelopes, once its export pass has made `count` of them."""
    async with aiohttp.ClientSession() as s:
        for _ in range(300):
            async with s.get(node.url + "/v1/snapshots") as resp:
                listed = (await resp.json())["snapshots"]
            if len(listed) >= count:
                break
            await asyncio.sleep(0.05)
        assert len(listed) == count, listed
        out = []
        for item in listed:
            async with s.get(node.url + item["url"]) as resp:
                assert resp.status == 200
                out.append(await resp.read())
    return out


@pytest.fixture
async def federation(tmp_path: Path) -> AsyncIterator[Federation]:
    settings = node_settings(tmp_path / "node")
    history = [ev(f"d{d}-s{s}", "runway-calculator", "calculate", d * 1440 + s, runway_months=6)
               for d in range(2) for s in range(30)]
    opened = open_node(settings, clock=lambda: NOW)
    try:
        import_lines(opened, io.StringIO("\n".join(json.dumps(e) for e in history)))
    finally:
        close_node(opened)
    hub_settings = HubSettings(data_dir=tmp_path / "hub", port=0, metrics_port=0)
    async with run_hub(hub_settings, now=lambda: NOW.timestamp()) as hub, run_node(settings, clock=lambda: NOW) as node:
        hub.hub.registry.enroll("the-node", node.node.key.public)
        other = SigningKey.generate()
        hub.hub.registry.enroll("another-node", other.public)
        for data in await node_envelopes(node, 2):  # the two days: log entries 1 and 2
            await post(hub, data)
        for day in range(3):  # entries 3 to 5
            await post(hub, envelope(other, W - (day + 1) * DAY, seed=day))
        key_file = tmp_path / "hub" / "keys" / "signing.pub"
        yield Federation(hub, node, hub.hub.key.public.b64, key_file, other, tmp_path)


async def verify(*args: str) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it, in a thread: the servers answer from this test's event loop."""
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "liberation", "hub", "log", "verify", *args],
        capture_output=True, text=True, timeout=120,
    )


def passed(result: subprocess.CompletedProcess[str], *phrases: str) -> str:
    assert result.returncode == 0, result.stderr
    for phrase in phrases:
        assert phrase in result.stdout, (phrase, result.stdout)
    return result.stdout


def refused(result: subprocess.CompletedProcess[str], *phrases: str) -> str:
    """Exit 1 with exactly one line, `liberation: ...`: no traceback, no address."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("liberation: "), result.stderr
    assert "127.0.0.1" not in result.stderr and "localhost" not in result.stderr
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])
    return lines[0]


def log_entries(hub: RunningHub) -> Entries:
    rows = hub.hub.store.cursor().execute(
        "SELECT seq, key_id, window_start, window_end, catalog, digest, epsilon, accepted FROM translog ORDER BY seq"
    ).fetchall()
    return [
        {"seq": s, "node": k, "window_start": ws, "window_end": we, "catalog": c, "digest": d,
         "epsilon": json.loads(e), "accepted": a}
        for s, k, ws, we, c, d, e, a in rows
    ]


def rewrite_log(hub: RunningHub, change: Callable[[Entries], Entries]) -> None:
    """What someone with write access to hub.duckdb can do: change entries, recompute every hash."""
    entries, prev, rows = change(log_entries(hub)), GENESIS, []
    for seq, entry in enumerate(entries, start=1):
        entry = {**entry, "seq": seq}
        digest = entry_hash(prev, content_of(entry))
        rows.append([seq, entry["node"], entry["window_start"], entry["window_end"], entry["catalog"], entry["digest"],
                     json.dumps(entry["epsilon"], sort_keys=True), entry["accepted"], prev, digest])
        prev = digest
    with hub.hub.store.transaction() as tx:
        tx.execute("DELETE FROM translog")
        for row in rows:
            tx.execute("INSERT INTO translog VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'snapshot')", row)


def tenth_of_the_epsilon(entries: Entries, index: int) -> Entries:
    entries[index]["epsilon"] = {m: e / 10 for m, e in entries[index]["epsilon"].items()}
    return entries


# ---- an honest log ----------------------------------------------------------------------------------


async def test_an_honest_log_verifies_and_each_check_extends_the_last(federation: Federation) -> None:
    f = federation
    key_id = f.hub.hub.key.public.key_id
    passed(await verify(f.hub.url, "--key", f.key_b64, "--state", str(f.state)),
           "the log verifies: 5 entries", f"signed by hub key {key_id}", "first check of this hub key")
    assert stat.S_IMODE(f.state.stat().st_mode) == 0o600
    recorded = json.loads(f.state.read_text())["hubs"][key_id]
    assert recorded["seq"] == 5 and recorded["entry_hash"] == log_entries_hash(f.hub, 5)
    await post(f.hub, envelope(f.other, W - 10 * DAY))
    # The key from the hub's own key file; two entries a page, so the log comes in four pages.
    out = passed(await verify(f.hub.url, "--key", str(f.key_file), "--state", str(f.state), "--page-size", "2",
                              "--node", f.node.url),
                 "the log verifies: 6 entries", "it extends the head verified before (entry 5)")
    assert f"node {f.node.node.key.public.key_id}: 2 snapshot(s), each in the log once" in out
    assert json.loads(f.state.read_text())["hubs"][key_id]["seq"] == 6
    assert not list(f.state.parent.glob(".*.tmp"))  # written through a temporary file, replaced at once


def log_entries_hash(hub: RunningHub, seq: int) -> str:
    rows = hub.hub.store.cursor().execute("SELECT entry_hash FROM translog WHERE seq = ?", [seq]).fetchall()
    return str(rows[0][0])


# ---- the review's rewrite ------------------------------------------------------------------------------


async def test_a_rewritten_log_is_caught_by_the_remembered_head_and_by_the_node(federation: Federation) -> None:
    f = federation
    passed(await verify(f.hub.url, "--key", f.key_b64, "--state", str(f.state)), "5 entries")
    before = f.state.read_bytes()
    entries = log_entries(f.hub)
    # Entry 3 (the other node's) dropped, entry 2 (our node's) claims a tenth of its epsilon.
    rewrite_log(f.hub, lambda entries: tenth_of_the_epsilon(entries, 1)[:2] + entries[3:])
    # The chain and the head signature alone accept the rewrite: the hub signs whatever it holds.
    passed(await verify(f.hub.url, "--key", f.key_b64), "the log verifies: 4 entries", "no --state")
    refused(await verify(f.hub.url, "--key", f.key_b64, "--state", str(f.state)),
            "the log shrank: its signed head is entry 4, but entry 5 was verified before")
    refused(await verify(f.hub.url, "--key", f.key_b64, "--node", f.node.url),
            "is in the hub's log (entry 2) with epsilon 0.05 over", "but the node's ledger recorded 0.5 over")
    # Entries appended to the rewritten log make it longer than the remembered one: still caught.
    # (Appended by hand: a running hub keeps its log head in memory, as the only writer of the log.)
    later = [{**entries[-1], "digest": f"{day:02x}" * 32, "window_start": W - day * DAY,
              "window_end": W - day * DAY + DAY} for day in (20, 21)]
    rewrite_log(f.hub, lambda entries: entries + later)
    refused(await verify(f.hub.url, "--key", f.key_b64, "--state", str(f.state)),
            "the log was rewritten: entry 5 has another hash than when it was verified before")
    assert f.state.read_bytes() == before  # a failed check never moves the remembered head


async def test_the_node_check_catches_dropped_duplicated_and_invented_snapshots(federation: Federation) -> None:
    f = federation
    original = log_entries(f.hub)
    ours = f.node.node.key.public.key_id
    assert [e["node"] for e in original[:2]] == [ours, ours]
    rewrite_log(f.hub, lambda _: [dict(e) for e in original[1:]])
    refused(await verify(f.hub.url, "--key", f.key_b64, "--node", f.node.url),
            f"node {ours}: the snapshot of 2026-11-20 00:00Z", "is not in the hub's log")
    rewrite_log(f.hub, lambda _: [dict(e) for e in original] + [dict(original[0])])
    refused(await verify(f.hub.url, "--key", f.key_b64, "--node", f.node.url), "is in the hub's log 2 times (entries 1, 6)")
    invented = {**original[0], "digest": "ab" * 32}
    rewrite_log(f.hub, lambda _: [dict(e) for e in original] + [invented])
    refused(await verify(f.hub.url, "--key", f.key_b64, "--node", f.node.url),
            f"node {ours}: the hub's log names 1 snapshot(s) of this node that it does not list (entries 6)")
    rewrite_log(f.hub, lambda _: [dict(e) for e in original])
    passed(await verify(f.hub.url, "--key", f.key_b64, "--node", f.node.url), "2 snapshot(s)")


# ---- forged or short answers: a stand-in serving a doctored copy of the real log ------------------------


class StandIn:
    """A server answering GET /v1/log with whatever `answer(after, limit)` returns (JSON, or raw text)."""

    def __init__(self, answer: Callable[[int, int], Any]) -> None:
        self.answer = answer

    async def handle(self, request: web.Request) -> web.Response:
        body = self.answer(int(request.query.get("after", "0")), int(request.query.get("limit", "1000")))
        if isinstance(body, str):
            return web.Response(text=body, content_type="application/json")
        return web.json_response(body)


@asynccontextmanager
async def stand_in(answer: Callable[[int, int], Any]) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/v1/log", StandIn(answer).handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def real_log(hub: RunningHub) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(hub.url + "/v1/log?limit=10000") as resp:
        return dict(await resp.json())


async def test_a_forged_or_short_log_is_refused(federation: Federation) -> None:
    f = federation
    log = await real_log(f.hub)
    impostor = SigningKey.generate()
    zeros = {**log, "hub": impostor.public.key_id,
             "head": {**log["head"], "signature": "00" * 64, "public_key": impostor.public.b64}}
    async with stand_in(lambda after, limit: zeros) as url:
        refused(await verify(url, "--key", f.key_b64),
                f"the log's head is not signed by the pinned hub key {f.hub.hub.key.public.key_id}",
                f"(the hub names key {impostor.public.key_id})")
    # The real hub, and a key that is not its own.
    refused(await verify(f.hub.url, "--key", impostor.public.b64),
            f"not signed by the pinned hub key {impostor.public.key_id}")

    def short(after: int, limit: int) -> dict[str, Any]:
        return {**log, "entries": [e for e in log["entries"] if after < e["seq"] <= min(after + limit, 3)]}

    async with stand_in(short) as url:
        refused(await verify(url, "--key", f.key_b64, "--page-size", "2"),
                "the log ends at entry 3, before its signed head (entry 5)")
    edited = [dict(e) for e in log["entries"]]
    edited[3]["accepted"] += 1  # an edit without re-chaining
    async with stand_in(lambda after, limit: {**log, "entries": [e for e in edited if e["seq"] > after][:limit]}) as url:
        refused(await verify(url, "--key", f.key_b64), "the log does not chain: entry 4: entry_hash does not match")


# ---- every failure is one line ---------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_every_failure_is_one_line_and_exit_1(federation: Federation, tmp_path: Path) -> None:
    f = federation
    refused(await verify(f.hub.url), "a pinned hub key is required: --key")
    refused(await verify(f.hub.url, "--key", "not-a-key"), "--key is not the hub's Ed25519 public key")
    garbage = tmp_path / "garbage.pub"
    garbage.write_bytes(b"\xff\xfe not a key")
    refused(await verify(f.hub.url, "--key", str(garbage)), "cannot read the hub key file")
    refused(await verify(f"http://127.0.0.1:{closed_port()}", "--key", f.key_b64),
            "the hub (GET /v1/log?after=0&limit=1000): connection refused")
    refused(await verify(f.hub.url + "/elsewhere", "--key", f.key_b64), "the hub (GET /v1/log", "HTTP 404 Not Found")
    refused(await verify("ftp://hub.example.org", "--key", f.key_b64), "give a URL such as https://")
    async with stand_in(lambda after, limit: "<html>a captive portal</html>") as url:
        refused(await verify(url, "--key", f.key_b64), "the answer is not JSON")
    async with stand_in(lambda after, limit: {"entries": []}) as url:
        refused(await verify(url, "--key", f.key_b64), "no signed head in the answer")
    refused(await verify(f.hub.url, "--key", f.key_b64, "--node", f"http://127.0.0.1:{closed_port()}"),
            "node #1 (GET /v1/snapshots): connection refused")
    (tmp_path / "a-file").write_text("")
    f.state.parent.mkdir(parents=True)
    f.state.write_text("{ not json")
    refused(await verify(f.hub.url, "--key", f.key_b64, "--state", str(f.state)),
            "is not a log state written by liberation; move it away to start afresh")
    assert f.state.read_text() == "{ not json"  # never overwritten: it may hold the head a rewrite must extend
    refused(await verify(f.hub.url, "--key", f.key_b64, "--state", str(tmp_path / "a-file" / "state.json")),
            "cannot read the state file")  # not a directory
    gone = tmp_path / "gone"
    gone.symlink_to(tmp_path / "nowhere")  # nothing to read, and no directory to write in (even for root)
    refused(await verify(f.hub.url, "--key", f.key_b64, "--state", str(gone / "state.json")),
            "cannot write the state file")
