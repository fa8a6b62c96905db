"""A share keeper on loopback: it answers a round once, the same bytes after, and refuses what it must.

The keeper app runs for real (aiohttp on 127.0.0.1, DuckDB, its own key files); the hub and
nodes are played by keys held here, their messages built with the protocol's own functions.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from keeper.app import KEEPER, Keeper, create_app
from keeper.settings import KeeperSettings
from protocol.catalog import load_catalog
from protocol.errors import PROBLEM_BASE, PROBLEM_CONTENT_TYPE
from protocol.keys import SigningKey
from protocol.rounds import (
    KeeperKey,
    RoundRequest,
    build_contribution,
    combine,
    sign_request,
    verify_answer,
    verify_contribution,
)
from runtime.metrics_listener import METRICS_LISTENER
from tests.servers import admin_token

CATALOG = load_catalog()
DAY = 86_400
W = 1_795_392_000  # 2026-11-22, long over by the test's clock
NOW = W + 3 * DAY
TOKEN = admin_token()
MSGPACK = {"Content-Type": "application/msgpack"}


@dataclass
class RunningKeeper:
    url: str
    app: web.Application

    @property
    def keeper(self) -> Keeper:
        return self.app[KEEPER]


@asynccontextmanager
async def run_keeper(data_dir: Path, hub: SigningKey) -> AsyncIterator[RunningKeeper]:
    settings = KeeperSettings(data_dir=data_dir, port=0, metrics_port=0, hub_keys=(hub.public.b64,),  # type: ignore[arg-type]
                              admin_token=TOKEN)
    app = create_app(settings, now=lambda: NOW)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield RunningKeeper(f"http://127.0.0.1:{runner.addresses[0][1]}", app)
    finally:
        await runner.cleanup()


@pytest.fixture
def hub_key() -> SigningKey:
    return SigningKey.from_seed(b"h" * 32)


@pytest.fixture
def nodes() -> list[SigningKey]:
    return [SigningKey.from_seed(bytes([i + 1]) * 32) for i in range(4)]


@pytest.fixture
async def keeper(tmp_path: Path, hub_key: SigningKey, nodes: list[SigningKey]) -> AsyncIterator[RunningKeeper]:
    async with run_keeper(tmp_path / "keeper", hub_key) as running:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession() as http:
            for i, node in enumerate(nodes):
                async with http.post(running.url + "/v1/admin/nodes", headers=auth,
                                     json={"name": f"n{i}", "public_key": node.public.b64}) as resp:
                    assert resp.status == 201
        yield running


def contributions(nodes: list[SigningKey], keepers: list[KeeperKey], window: int = W) -> list[bytes]:
    rng = np.random.default_rng(7)
    out = [build_contribution(CATALOG, rng.integers(0, 9, CATALOG.federation_size).tolist(), key=n, keepers=keepers,
                              window_start=window, window_end=window + DAY, created=window + DAY)
           for n in nodes]
    return sorted(out, key=lambda e: verify_contribution(e, max_size=1 << 20).contribution.node)


def request(hub: SigningKey, parts: list[bytes], window: int = W) -> bytes:
    return sign_request(RoundRequest(CATALOG.hash, window, window + DAY, tuple(parts)), hub)


async def post(url: str, data: bytes) -> tuple[int, Any, str]:
    async with aiohttp.ClientSession() as http, http.post(url, data=data, headers=MSGPACK) as resp:
        body = await resp.read()
        if resp.content_type in (PROBLEM_CONTENT_TYPE, "application/json"):
            return resp.status, json.loads(body), resp.content_type
        return resp.status, body, resp.content_type


async def test_a_round_is_answered_once_signed_and_the_same_bytes_after(
    keeper: RunningKeeper, hub_key: SigningKey, nodes: list[SigningKey]
) -> None:
    me = keeper.keeper.identity.statement
    parts = contributions(nodes, [me])
    status, body, _ = await post(keeper.url + "/v1/rounds/check", request(hub_key, parts))
    assert (status, body["nodes"]) == (200, 4)
    assert keeper.keeper.store.ledger() == []  # a check stores nothing
    status, first, kind = await post(keeper.url + "/v1/rounds/answer", request(hub_key, parts))
    assert (status, kind) == (200, "application/msgpack")
    answer = verify_answer(first, max_size=1 << 24)
    assert answer.public_key == me.identity
    digests = [verify_contribution(p, max_size=1 << 20).digest for p in parts]
    assert list(answer.answer.digests) == digests
    # One keeper only: the masks cancel and its noise is what is left.
    ys = [verify_contribution(p, max_size=1 << 20).contribution.y for p in parts]
    total = combine(ys, [answer.answer.a], CATALOG.federation_size)
    truth = sum(np.random.default_rng(7).integers(0, 9, CATALOG.federation_size) for _ in parts)
    assert 0 < np.abs(total - truth).sum()  # noised
    assert np.abs(total - truth).max() < 10_000  # and only noised (no mask left)
    # Asked again, in the same order: the same bytes; no new noise drawn.
    for _ in range(2):
        status, again, _ = await post(keeper.url + "/v1/rounds/answer", request(hub_key, parts))
        assert (status, again) == (200, first)
    assert len(keeper.keeper.store.ledger()) == 1
    # Another participant set for the round: refused, whatever the hub's reason.
    status, body, kind = await post(keeper.url + "/v1/rounds/answer", request(hub_key, parts[:3]))
    assert (status, body["type"], kind) == (409, PROBLEM_BASE + "round-already-answered", PROBLEM_CONTENT_TYPE)
    metrics_url = keeper.app[METRICS_LISTENER].url
    async with aiohttp.ClientSession() as http, http.get(f"{metrics_url}/metrics") as resp:
        text = await resp.text()
    assert "liberation_keeper_rounds_answered_total 1.0" in text
    assert "liberation_keeper_answers_repeated_total 2.0" in text
    async with aiohttp.ClientSession() as http, http.get(f"{keeper.url}/metrics") as resp:
        assert resp.status == 404  # never on the keeper's own port


async def test_the_answer_survives_a_restart(tmp_path: Path, hub_key: SigningKey, nodes: list[SigningKey]) -> None:
    async with run_keeper(tmp_path / "k", hub_key) as first_run:
        for i, node in enumerate(nodes):
            first_run.keeper.registry.enroll(f"n{i}", node.public)
        parts = contributions(nodes, [first_run.keeper.identity.statement])
        status, first, _ = await post(first_run.url + "/v1/rounds/answer", request(hub_key, parts))
        assert status == 200
    async with run_keeper(tmp_path / "k", hub_key) as second_run:
        status, again, _ = await post(second_run.url + "/v1/rounds/answer", request(hub_key, parts))
        assert (status, again) == (200, first)
        status, body, _ = await post(second_run.url + "/v1/rounds/answer", request(hub_key, parts[1:]))
        assert (status, body["type"]) == (409, PROBLEM_BASE + "round-already-answered")
    for name in ("signing.key", "sealing.key"):
        assert stat.S_IMODE(os.stat(tmp_path / "k" / "keys" / name).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "k" / "keys").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "k").st_mode) == 0o700


async def test_requests_it_must_refuse(keeper: RunningKeeper, hub_key: SigningKey, nodes: list[SigningKey]) -> None:
    me = keeper.keeper.identity.statement
    parts = contributions(nodes, [me])
    url = keeper.url + "/v1/rounds/answer"
    stranger = SigningKey.from_seed(b"s" * 32)
    forged = bytearray(parts[1])
    forged[-10] ^= 0x10  # inside the signature
    other_keeper = KeeperKey.issue(SigningKey.from_seed(b"k" * 32), bytes.fromhex(
        "4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a"))
    signed = bytearray(request(hub_key, parts))
    signed[-10] ^= 0x01  # inside the hub's signature
    tampered = bytes(signed)
    # Sealed under this keeper's id, but to another X25519 key: it cannot be opened here.
    unopenable = KeeperKey(me.identity, other_keeper.hpke, me.signature)
    cases: list[tuple[str, bytes, int, str]] = [
        ("a hub it does not know", request(stranger, parts), 403, "unknown-hub"),
        ("fewer than min_nodes", request(hub_key, parts[:2]), 422, "too-few-nodes"),
        ("an unenrolled node", request(hub_key, contributions([*nodes[:3], stranger], [me])), 403, "unknown-key"),
        ("a bad signature", request(hub_key, [parts[0], bytes(forged), *parts[2:]]), 400, "invalid-signature"),
        ("a node twice", request(hub_key, [parts[0], parts[0], *parts[1:]]), 400, "duplicate-node"),
        ("another round's contribution", request(hub_key, parts, W + DAY), 422, "wrong-round"),
        ("a round not over", request(hub_key, contributions(nodes, [me], NOW), NOW), 422, "window-out-of-range"),
        ("no seed for this keeper", request(hub_key, contributions(nodes, [other_keeper])), 422, "not-sealed-to-keeper"),
        ("the request tampered with", tampered, 400, "invalid-signature"),
        ("not a request", b"\x81\xa1a\x01", 400, "malformed-request"),
    ]
    for name, data, status, slug in cases:
        got, body, kind = await post(url, data)
        assert (got, body["type"], kind) == (status, PROBLEM_BASE + slug, PROBLEM_CONTENT_TYPE), name
        assert body["status"] == status and body["detail"]
    # Seeds it cannot open: named, so the hub can leave those nodes out; nothing stored.
    mixed = contributions(nodes[:1], [unopenable]) + contributions(nodes[1:], [me])
    mixed.sort(key=lambda e: verify_contribution(e, max_size=1 << 20).contribution.node)
    got, body, _ = await post(keeper.url + "/v1/rounds/check", request(hub_key, mixed))
    assert (got, body["type"], body["nodes"]) == (422, PROBLEM_BASE + "unopenable-seed", [nodes[0].public.key_id])
    # A revoked node is refused like an unknown one, and named.
    keeper.keeper.registry.revoke("n3")
    got, body, _ = await post(url, request(hub_key, parts))
    assert (got, body["type"], body["node"]) == (403, PROBLEM_BASE + "revoked-key", nodes[3].public.key_id)
    assert keeper.keeper.store.ledger() == []  # nothing of any of it answered or kept
    async with aiohttp.ClientSession() as http, http.post(url, data=b"{}", headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 415


async def test_identity_ledger_and_admin(keeper: RunningKeeper) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(keeper.url + "/v1/keeper") as resp:
            ident = await resp.json()
        statement = keeper.keeper.identity.statement
        assert ident["key_id"] == statement.key_id and ident["catalogs"] == [CATALOG.hash]
        async with http.get(keeper.url + "/healthz") as resp:
            assert (await resp.json())["key_id"] == statement.key_id
        async with http.get(keeper.url + "/v1/admin/nodes") as resp:
            assert resp.status == 401
        async with http.get(keeper.url + "/v1/admin/nodes", headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert len((await resp.json())["nodes"]) == 4
        async with http.get(keeper.url + "/v1/ledger") as resp:
            assert (await resp.json())["rounds"] == []


async def test_a_hub_enrolls_a_keeper_from_its_statement(keeper: RunningKeeper, tmp_path: Path) -> None:
    """`liberation hub enroll --keeper URL` (hub stopped): the statement is fetched and checked against the key."""
    import asyncio
    import contextlib
    import io

    from federation.service import close_hub, open_hub
    from federation.settings import HubSettings
    from liberation.cli import build_parser
    from runtime.admin import Refused

    statement = keeper.keeper.identity.statement

    def enroll(key: str) -> str:
        args = build_parser().parse_args(["hub", "enroll", "--data-dir", str(tmp_path / "hub"), "--name", "k1",
                                          "--key", key, "--keeper", keeper.url])
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert args.func(args) == 0
        return out.getvalue()

    with pytest.raises(Refused, match="another key"):  # the keeper at the URL is not that key
        await asyncio.to_thread(enroll, SigningKey.from_seed(b"z" * 32).public.b64)
    done = await asyncio.to_thread(enroll, statement.identity.b64)
    assert f"enrolled k1 (keeper): key id {statement.key_id}" in done
    hub = open_hub(HubSettings(data_dir=tmp_path / "hub", port=0, metrics_port=None))  # type: ignore[arg-type]
    try:
        assert [(k.key_id, k.url, k.statement) for k in hub.keepers.active()] == [(statement.key_id, keeper.url, statement)]
        assert hub.keepers.listing()["keepers"][0]["key_id"] == statement.key_id  # type: ignore[index]
        hub.registry.revoke("k1")
        assert hub.keepers.active() == []
    finally:
        close_hub(hub)
