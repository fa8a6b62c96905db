"""Crash durability: SIGKILL a node under ingest load, and a hub under intake, again and again.

After every kill the process restarts on the same data; at the end every
request that was acknowledged (node: 202; hub: 202/200) must be stored
exactly once, and nothing half-stored. `make bench` runs 20 kills of each;
the test suite runs a few (tests/test_crash.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import duckdb

from node.privacy import session_hash

URL = '"url": "(http://127\\.0\\.0\\.1:\\d+)"'


def _start(args: list[str], env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    import re
    import urllib.request

    handle = open(log, "ab")
    proc = subprocess.Popen([sys.executable, "-m", "liberation", *args], stdout=handle, stderr=handle, env={**os.environ, **env})
    handle.close()
    deadline = time.monotonic() + 30
    offset = log.stat().st_size if log.exists() else 0
    while time.monotonic() < deadline:
        text = log.read_bytes()[offset:].decode(errors="replace")
        found = re.findall(URL, text)
        if found and proc.poll() is None:
            try:
                with urllib.request.urlopen(found[-1] + "/healthz", timeout=1):  # noqa: S310 - loopback
                    return proc, found[-1]
            except OSError:
                pass
        if proc.poll() is not None:
            raise RuntimeError(f"exited: {log.read_text()[-1500:]}")
        time.sleep(0.05)
    raise TimeoutError(log.read_text()[-1500:])


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait(timeout=30)


def _event(batch: int, i: int) -> dict[str, Any]:
    return {"app": "runway-calculator", "action": "calculate", "attributes": {"runway_months": 4},
            "timestamp": datetime.now(UTC).isoformat(), "session_id": f"crash-{batch:06d}-{i:03d}"}


async def _load(url: str, first_batch: int, acked: set[int], sent: set[int], stop: asyncio.Event) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        n = first_batch
        while not stop.is_set():
            sent.add(n)
            try:
                async with http.post(url + "/v1/events", json=[_event(n, i) for i in range(100)]) as resp:
                    if resp.status == 202:
                        acked.add(n)
            except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError):
                return
            n += 4


async def node_crashes(kills: int, root: Path, *, rng: random.Random) -> dict[str, int]:
    """Kill a node `kills` times under load; return counts (acked, lost, duplicated, partial)."""
    data = root / "node"
    env = {"LIBERATION_NODE_DATA_DIR": str(data), "LIBERATION_NODE_PORT": "0", "LIBERATION_NODE_METRICS_PORT": "0",
           "LIBERATION_NODE_RATE_LIMIT__REQUESTS_PER_SECOND": "0"}
    acked: set[int] = set()
    sent: set[int] = set()
    for round_ in range(kills):
        proc, url = await asyncio.to_thread(_start, ["node", "serve"], env, root / "node.log")
        stop = asyncio.Event()
        base = round_ * 100_000
        workers = [asyncio.create_task(_load(url, base + w, acked, sent, stop)) for w in range(4)]
        await asyncio.sleep(rng.uniform(0.2, 1.2))  # a random moment under load
        _kill(proc)
        stop.set()
        await asyncio.gather(*workers)
    proc, _ = await asyncio.to_thread(_start, ["node", "serve"], env, root / "node.log")
    proc.terminate()
    proc.wait(timeout=30)
    salts = [p.read_bytes() for p in (data / "salts").glob("*.salt")]
    con = duckdb.connect(str(data / "node.duckdb"), read_only=True)
    counts = dict(con.execute("SELECT session, count(*) FROM events GROUP BY 1").fetchall())
    con.close()
    lost = duplicated = partial = 0
    for n in sent:
        stored = [sum(counts.get(session_hash(s, f"crash-{n:06d}-{i:03d}".encode()), 0) for s in salts) for i in range(100)]
        if n in acked:
            lost += stored.count(0)
            duplicated += sum(1 for c in stored if c > 1)
        elif stored not in ([0] * 100, [1] * 100):
            partial += 1
    return {"kills": kills, "acked_batches": len(acked), "acked_events": 100 * len(acked),
            "lost": lost, "duplicated": duplicated, "partial_batches": partial}


async def hub_crashes(kills: int, root: Path, *, rng: random.Random, envelopes_per_round: int = 60) -> dict[str, int]:
    """Kill a hub `kills` times under intake; check envelopes, merged sums and the log."""
    from protocol.envelope import verify_envelope
    from protocol.keys import SigningKey
    from tests.snapshots import DAY, envelope

    token = secrets.token_urlsafe(32)
    env = {
        "LIBERATION_HUB_DATA_DIR": str(root / "hub"),
        "LIBERATION_HUB_PORT": "0",
        "LIBERATION_HUB_METRICS_PORT": "0",
        "LIBERATION_HUB_ADMIN_TOKEN": token,
    }
    today = int(time.time()) // DAY * DAY
    keys = [SigningKey.generate() for _ in range(envelopes_per_round)]
    pending = [envelope(k, today - (1 + r) * DAY, seed=r) for r in range(kills) for k in keys]
    acked: set[bytes] = set()
    enrolled = False
    cursor = 0
    for _ in range(kills):
        proc, url = await asyncio.to_thread(_start, ["hub", "serve"], env, root / "hub.log")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            if not enrolled:
                for i, k in enumerate(keys):
                    async with http.post(url + "/v1/admin/nodes", json={"name": f"n{i}", "public_key": k.public.b64},
                                         headers={"Authorization": f"Bearer {token}"}) as resp:
                        assert resp.status == 201
                enrolled = True
            stop = asyncio.Event()

            async def post(data: bytes) -> None:
                try:
                    async with http.post(
                        url + "/v1/snapshots",  # noqa: B023 - awaited within this iteration
                        data=data,
                        headers={"Content-Type": "application/msgpack"},
                    ) as resp:
                        if resp.status in (200, 202):
                            acked.add(data)
                except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError):
                    pass

            async def load() -> None:
                nonlocal cursor
                while not stop.is_set() and cursor < len(pending):  # noqa: B023 - awaited within this iteration
                    data = pending[cursor]
                    cursor += 1
                    await post(data)

            workers = [asyncio.create_task(load()) for _ in range(4)]
            await asyncio.sleep(rng.uniform(0.1, 0.6))
            _kill(proc)
            stop.set()
            await asyncio.gather(*workers)
    proc, url = await asyncio.to_thread(_start, ["hub", "serve"], env, root / "hub.log")
    # Everything not acked is offered again, as nodes' outboxes do: it must now land once.
    async with aiohttp.ClientSession() as http:
        for data in pending[:cursor]:
            async with http.post(url + "/v1/snapshots", data=data, headers={"Content-Type": "application/msgpack"}) as resp:
                assert resp.status in (200, 202), await resp.text()
        async with http.get(url + "/v1/log?limit=10000") as resp:
            log = await resp.json()
    proc.terminate()
    proc.wait(timeout=30)
    con = duckdb.connect(str(root / "hub" / "hub.duckdb"), read_only=True)
    stored = {bytes(e) for (e,) in con.execute("SELECT envelope FROM envelopes").fetchall()}
    merged = dict(((m, k, int(i), int(w)), int(v)) for m, k, i, w, v in
                  con.execute("SELECT metric, kind, idx, window_start, value FROM merged").fetchall())
    con.close()
    expected: Counter[tuple[str, str, int, int]] = Counter()
    for data in stored:
        snap = verify_envelope(data).snapshot
        for name, cells in snap.metrics.items():
            for i, v in zip(cells.idx, cells.val, strict=False):
                expected[(name, "cell", i, snap.window_start)] += v
            for i, v in zip(cells.other_idx, cells.other_val, strict=False):
                expected[(name, "other", i, snap.window_start)] += v
    from federation.translog import verify_chain

    verify_chain(log["entries"])
    return {"kills": kills, "acked_before_kill": len(acked), "lost": len(acked - stored),
            "merged_mismatches": sum(1 for k in set(expected) | set(merged) if expected.get(k, 0) != merged.get(k, 0)),
            "log_entries": len(log["entries"]), "stored": len(stored)}


def main() -> None:
    rng = random.Random(20261124)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        node = asyncio.run(node_crashes(20, Path(tmp), rng=rng))
        print(f"node: {json.dumps(node)}  ({time.perf_counter() - started:.0f} s)")
        started = time.perf_counter()
        hub = asyncio.run(hub_crashes(20, Path(tmp), rng=rng))
        print(f"hub:  {json.dumps(hub)}  ({time.perf_counter() - started:.0f} s)")
    ok = node["lost"] == node["duplicated"] == node["partial_batches"] == 0 and hub["lost"] == hub["merged_mismatches"] == 0
    print("PASS" if ok else "MISS", "(0 acknowledged events lost, 0 duplicated, merged sums exact)")
