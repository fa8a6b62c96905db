"""Data files are 0600 and data directories 0700 whatever the umask: node and hub, served and in-process."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from federation.settings import HubSettings
from protocol.keys import SigningKey
from tests.servers import Process, admin_token, node_settings, run_hub, run_node
from tests.snapshots import DAY, envelope

PUBLIC = {"signing.pub"}  # the public key, 0644 by design (protocol/keys.py); its directory is 0700


def loose_modes(root: Path) -> list[str]:
    """Every directory under `root` (itself included) not 0700 and every file not 0600, with its mode."""
    found = []
    for directory, _, files in os.walk(root):
        for path in [Path(directory)] + [Path(directory) / f for f in files]:
            try:
                info = path.lstat()
            except FileNotFoundError:
                continue  # a WAL removed by a checkpoint meanwhile
            mode = stat.S_IMODE(info.st_mode)
            wanted = 0o700 if stat.S_ISDIR(info.st_mode) else 0o644 if path.name in PUBLIC else 0o600
            if mode != wanted:
                found.append(f"{path.relative_to(root.parent)} {mode:04o}")
    return found


def event(i: int) -> dict[str, object]:
    return {
        "app": "runway-calculator", "action": "calculate",
        "attributes": {"runway_months": 8.5, "savings_band": "10k-25k", "industry": "tech"},
        "timestamp": datetime.now(UTC).isoformat(), "session_id": f"sess_modes_{i:06d}",
    }


async def feed_hub(url: str, token: str) -> None:
    """Enroll a key and post one snapshot of yesterday: the hub writes its DuckDB file and a Parquet file."""
    key = SigningKey.generate()
    today = int(time.time()) // DAY * DAY
    async with aiohttp.ClientSession() as session:
        body = {"name": "modes", "public_key": key.public.b64}
        async with session.post(url + "/v1/admin/nodes", json=body, headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 201, await resp.text()
        data = envelope(key, today - DAY)
        async with session.post(url + "/v1/snapshots", data=data, headers={"Content-Type": "application/msgpack"}) as resp:
            assert resp.status == 202, await resp.text()


async def feed_node(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(url + "/v1/events", json=[event(i) for i in range(20)]) as resp:
            assert resp.status == 202, await resp.text()


@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask-022", "umask-000"])
async def test_served_data_dirs_are_private(tmp_path: Path, umask: int) -> None:
    """Review L7: under umask 022 node.duckdb, hub.duckdb and the archive were 0644 and the data dirs 0755."""
    token = admin_token()
    data = tmp_path / "data"  # made by the services, parents included
    hub_env = {"LIBERATION_HUB_DATA_DIR": str(data / "hub"), "LIBERATION_HUB_PORT": "0", "LIBERATION_HUB_ADMIN_TOKEN": token}
    node_env = {
        "LIBERATION_NODE_DATA_DIR": str(data / "node"), "LIBERATION_NODE_PORT": "0",
        "LIBERATION_NODE_RATE_LIMIT__REQUESTS_PER_SECOND": "0",
    }
    hub = Process(["hub", "serve"], tmp_path / "hub.log", hub_env, umask=umask)
    try:
        node = Process(["node", "serve"], tmp_path / "node.log", node_env, umask=umask)
        try:
            await feed_hub(hub.url, token)
            await feed_node(node.url)
            await asyncio.sleep(1.5)  # the node drains its stage into DuckDB (a WAL appears)
            assert loose_modes(data) == []  # while running: WAL and spill directories included
        finally:
            assert node.stop() == 0
    finally:
        assert hub.stop() == 0
    names = {p.name for p in data.rglob("*")}
    assert {"node.duckdb", "hub.duckdb", "salts", "archive"} <= names
    assert any(name.endswith(".parquet") for name in names)
    assert loose_modes(data) == []


@pytest.fixture
def umask_000() -> Iterator[None]:
    """The most permissive umask, for this test only: the stores must set modes themselves."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


async def test_stores_set_their_modes_without_the_service_umask(tmp_path: Path, umask_000: None) -> None:
    """In-process (a test, `node import` under another umask): every file and directory is made with its mode."""
    data = tmp_path / "data"
    async with run_node(node_settings(data / "node")) as running:
        await feed_node(running.url)
        running.node.store.drain()
        assert (data / "node" / "node.duckdb").exists()
        assert loose_modes(data) == []
    token = admin_token()
    async with run_hub(HubSettings(data_dir=data / "hub", port=0, metrics_port=0, admin_token=token)) as running_hub:  # type: ignore[arg-type]
        await feed_hub(running_hub.url, token)
        deadline = time.monotonic() + 10
        while not list((data / "hub" / "archive").rglob("*.parquet")):  # the archive trails the ack
            assert time.monotonic() < deadline, "no archive file written"
            await asyncio.sleep(0.05)
        assert loose_modes(data) == []
    assert loose_modes(data) == []
    assert sorted(p.name for p in data.iterdir()) == ["hub", "node"]


@pytest.mark.parametrize("umask", [0o022, 0o000, 0o027], ids=["umask-022", "umask-000", "umask-027"])
def test_the_liberation_command_adds_umask_077(umask: int) -> None:
    """DuckDB makes a new WAL after each checkpoint (and spill files) with the umask's mode: the command's is 077."""
    code = "import os, sys; from liberation.cli import main; main(['catalog', 'hash']); print(oct(os.umask(0)), file=sys.stderr)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, umask=umask)
    assert result.returncode == 0, result.stderr
    assert int(result.stderr.strip(), 8) == umask | 0o077
