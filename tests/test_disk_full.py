"""Disk full: a node on a small tmpfs answers 503 with Retry-After instead of acking, keeps its
DuckDB file sound, and takes events again once space returns."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import pytest

from federation.settings import HubSettings
from protocol.errors import PROBLEM_BASE
from protocol.keys import SigningKey
from tests.servers import admin_token, node_settings, run_hub, run_node
from tests.snapshots import DAY, envelope


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs (needs root; CI runs as root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True, text=True)
    if result.returncode != 0:
        reason = f"cannot mount a tmpfs here: {result.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def batch(start: int) -> list[dict[str, Any]]:
    now = datetime.now(UTC).isoformat()
    return [
        {"app": "runway-calculator", "action": "calculate", "attributes": {"runway_months": 5, "industry": "tech"},
         "timestamp": now, "session_id": f"disk-{start + i:09d}"}
        for i in range(1000)
    ]


@pytest.mark.slow
async def test_disk_full_is_a_503_and_recovers(small_disk: Path) -> None:
    data = small_disk / "node"
    acked = 0
    async with run_node(node_settings(data)) as running, aiohttp.ClientSession() as http:
        stat = os.statvfs(small_disk)
        filler = small_disk / "filler"
        filler.write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - 2 * 1024 * 1024))  # leave 2 MiB
        refused = 0
        for b in range(300):
            async with http.post(running.url + "/v1/events", json=batch(b * 1000)) as resp:
                if resp.status == 202:
                    acked += 1000
                    continue
                assert resp.status == 503
                assert int(resp.headers["Retry-After"]) > 0
                body = await resp.json(content_type=None)
                assert body["type"] == PROBLEM_BASE + "storage-unavailable"
                refused += 1
                if refused == 3:
                    break
        assert refused == 3, "the disk never filled up"
        assert running.node.store.row_count() == acked  # nothing refused was stored
        filler.unlink()
        for b in range(3):
            async with http.post(running.url + "/v1/events", json=batch(10_000_000 + b * 1000)) as resp:
                assert resp.status == 202
                acked += 1000
        assert running.node.store.row_count() == acked
    # After a restart the file opens and holds exactly what was acknowledged.
    con = duckdb.connect(str(data / "node.duckdb"), read_only=True)
    assert con.execute("SELECT count(*), count(DISTINCT session) FROM events").fetchall() == [(acked, acked)]
    con.close()


@pytest.mark.slow
async def test_hub_disk_full_is_the_same_503_and_recovers(small_disk: Path) -> None:
    """One group-commit primitive: a failed hub commit is answered as the node's (503 storage-unavailable)."""
    key = SigningKey.generate()
    token = admin_token()
    settings = HubSettings(data_dir=small_disk / "hub", port=0, metrics_port=0, admin_token=token)  # type: ignore[arg-type]
    today = int(time.time()) // DAY * DAY
    async with run_hub(settings) as hub, aiohttp.ClientSession() as http:
        async with http.post(hub.url + "/v1/admin/nodes", json={"name": "n", "public_key": key.public.b64},
                             headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 201
        stat = os.statvfs(small_disk)
        filler = small_disk / "filler"
        filler.write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - 256 * 1024))  # leave 256 KiB
        accepted, refused, day = 0, 0, 1
        while refused < 2 and day < 300:
            data = envelope(key, today - day * DAY, seed=day)
            async with http.post(hub.url + "/v1/snapshots", data=data,
                                 headers={"Content-Type": "application/msgpack"}) as resp:
                if resp.status == 202:
                    accepted, day = accepted + 1, day + 1
                    continue
                body = await resp.json(content_type=None)
                assert (resp.status, body["type"]) == (503, PROBLEM_BASE + "storage-unavailable"), body
                assert int(resp.headers["Retry-After"]) > 0
                refused += 1
        assert refused == 2, "the disk never filled up"
        filler.unlink()
        async with http.post(hub.url + "/v1/snapshots", data=envelope(key, today - day * DAY, seed=day),
                             headers={"Content-Type": "application/msgpack"}) as resp:
            assert resp.status == 202  # the refused snapshot, sent again once there is space
        async with http.get(hub.url + "/v1/log?limit=10000") as resp:
            assert len((await resp.json())["entries"]) == accepted + 1  # nothing refused was logged
