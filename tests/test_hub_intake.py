"""Hub intake on a real server: every check in order, its status, problem type and counter."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import pyarrow.parquet as pq
import pytest

import federation.intake as intake_module
from federation.archive import SCHEMA
from federation.intake_commit import IntakeResult
from federation.service import Hub, close_hub, open_hub
from federation.settings import HubSettings
from federation.translog import verify_chain
from protocol.catalog import Catalog, load_catalog
from protocol.codec import encode_canonical
from protocol.envelope import sign_snapshot, verify_envelope
from protocol.errors import PROBLEM_BASE, Problem
from protocol.keys import SigningKey, key_id_of
from protocol.snapshot import Snapshot, max_envelope_size
from protocol.windows import window_start
from runtime.storage import StoreVersionError
from tests.factories import weekly_catalog
from tests.servers import RunningHub, admin_token, run_hub
from tests.snapshots import DAY, envelope, node_snapshot

TOKEN = admin_token()
NOW = datetime(2026, 11, 24, 12, tzinfo=UTC).timestamp()
W = int(NOW) - int(NOW) % DAY - 3 * DAY  # three days ago
CATALOG = load_catalog()


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[RunningHub]:
    settings = HubSettings(data_dir=tmp_path / "hub", port=0, metrics_port=0, admin_token=TOKEN)  # type: ignore[arg-type]
    async with run_hub(settings, now=lambda: NOW) as running:
        yield running


async def enroll(hub: RunningHub, name: str, key: SigningKey, kind: str = "node") -> None:
    async with aiohttp.ClientSession() as s, s.post(
        hub.url + "/v1/admin/nodes", json={"name": name, "public_key": key.public.b64, "kind": kind},
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as resp:
        assert resp.status == 201, await resp.text()


async def push(hub: RunningHub, data: bytes, content_type: str = "application/msgpack") -> tuple[int, Any]:
    payload: Any = io.BytesIO(data) if len(data) > 512 * 1024 else data  # aiohttp warns on big raw bytes
    async with aiohttp.ClientSession() as s, s.post(
        hub.url + "/v1/snapshots", data=payload, headers={"Content-Type": content_type}
    ) as resp:
        return resp.status, json.loads(await resp.text())


async def metric_text(hub: RunningHub) -> str:
    async with aiohttp.ClientSession() as s, s.get(hub.metrics_url + "/metrics") as resp:
        return await resp.text()


def merged(hub: RunningHub) -> dict[tuple[str, str, int], int]:
    rows = hub.hub.store.cursor().execute("SELECT metric, kind, idx, value FROM merged WHERE window_start = ?", [W]).fetchall()
    return {(m, k, int(i)): int(v) for m, k, i, v in rows}


async def test_accept_merge_replay_and_log(hub: RunningHub) -> None:
    a, b = SigningKey.generate(), SigningKey.generate()
    await enroll(hub, "alpha", a)
    await enroll(hub, "beta", b)
    env_a, env_b = envelope(a, W, seed=1), envelope(b, W, seed=2)
    status, body = await push(hub, env_a)
    assert status == 202 and body["status"] == "accepted" and body["log_seq"] == 1
    status, body = await push(hub, env_b)
    assert status == 202 and body["log_seq"] == 2
    # Replays are idempotent: 200, never counted twice.
    for _ in range(3):
        status, body = await push(hub, env_a)
        assert status == 200 and body["status"] == "duplicate"
    sa, sb = verify_envelope(env_a).snapshot, verify_envelope(env_b).snapshot
    expected: dict[tuple[str, str, int], int] = {}
    for snap in (sa, sb):
        for name, cells in snap.metrics.items():
            for i, v in zip(cells.idx, cells.val, strict=False):
                expected[(name, "cell", i)] = expected.get((name, "cell", i), 0) + v
            for i, v in zip(cells.other_idx, cells.other_val, strict=False):
                expected[(name, "other", i)] = expected.get((name, "other", i), 0) + v
    assert merged(hub) == expected
    text = await metric_text(hub)
    assert "liberation_hub_snapshots_accepted_total 2.0" in text
    assert "liberation_hub_snapshots_duplicate_total 3.0" in text
    # The transparency log chains and carries each snapshot's epsilon.
    async with aiohttp.ClientSession() as s, s.get(hub.url + "/v1/log") as resp:
        log = await resp.json()
    assert [e["node"] for e in log["entries"]] == [a.public.key_id, b.public.key_id]
    assert verify_chain(log["entries"]) == log["head"]["entry_hash"]
    assert sum(log["entries"][0]["epsilon"].values()) == pytest.approx(CATALOG.epsilon_community)
    for query in ("after=18446744073709551616", "after=-1", "after=x"):  # out of int64: a 400, not a 500
        async with aiohttp.ClientSession() as s, s.get(hub.url + "/v1/log?" + query) as resp:
            assert resp.status == 400 and (await resp.json())["type"].endswith("/invalid-query")
    tampered = [dict(e) for e in log["entries"]]
    tampered[0]["epsilon"] = {k: 0.0 for k in tampered[0]["epsilon"]}
    with pytest.raises(ValueError, match="entry 1"):
        verify_chain(tampered)
    # The archive holds the cells in place for other engines.
    archive = hub.hub.archive.root
    rows = duckdb.sql(
        f"SELECT count(DISTINCT node), sum(value) FROM read_parquet('{archive}/**/*.parquet', hive_partitioning = true)"
    ).fetchall()
    assert rows == [(2, sum(expected.values()))]


async def test_equivocation_is_refused_and_recorded(hub: RunningHub) -> None:
    key = SigningKey.generate()
    await enroll(hub, "alpha", key)
    assert (await push(hub, envelope(key, W, seed=1)))[0] == 202
    before = merged(hub)
    status, body = await push(hub, envelope(key, W, seed=99))  # same window, other noise
    assert status == 409 and body["type"] == PROBLEM_BASE + "equivocation"
    assert merged(hub) == before
    async with aiohttp.ClientSession() as s, s.get(
        hub.url + "/v1/admin/incidents", headers={"Authorization": f"Bearer {TOKEN}"}
    ) as resp:
        incidents = (await resp.json())["incidents"]
    assert [(i["kind"], i["node"], i["window_start"]) for i in incidents] == [("equivocation", key.public.key_id, W)]
    assert 'liberation_hub_snapshots_rejected_total{reason="equivocation"} 1.0' in await metric_text(hub)


def flip(data: bytes, position: int) -> bytes:
    out = bytearray(data)
    out[position] ^= 0x01
    return bytes(out)


async def test_every_check_has_its_status_and_counter(hub: RunningHub) -> None:
    key, stranger, revoked = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    await enroll(hub, "alpha", key)
    await enroll(hub, "gone", revoked)
    async with aiohttp.ClientSession() as s, s.delete(
        hub.url + "/v1/admin/nodes/gone", headers={"Authorization": f"Bearer {TOKEN}"}
    ) as resp:
        assert resp.status == 200 and (await resp.json())["active"] is False
    good = envelope(key, W)
    other_catalog = node_snapshot(key, W).model_copy(update={"catalog": "f" * 64})
    future = node_snapshot(key, int(NOW) - int(NOW) % DAY)  # today's window has not ended
    ancient = node_snapshot(key, W - 500 * DAY)
    wrong_cells = node_snapshot(key, W)
    metrics = dict(wrong_cells.metrics)
    metrics["session_tools"] = metrics["session_tools"].model_copy(update={"idx": (7,), "val": (50,)})
    wrong_cells = wrong_cells.model_copy(update={"metrics": metrics})
    cases = [
        (b"\x00" * (hub.hub.intake.max_bytes + 1), 413, "snapshot-too-large"),
        (b"not msgpack at all", 400, "malformed-envelope"),
        (envelope(stranger, W), 403, "unknown-key"),
        (envelope(revoked, W), 403, "revoked-key"),
        (flip(good, len(good) - 10), 400, "invalid-signature"),  # inside the signature
        (sign_snapshot(other_catalog, key), 422, "unknown-catalog"),
        (sign_snapshot(future, key), 422, "window-out-of-range"),
        (sign_snapshot(ancient, key), 422, "window-out-of-range"),
        (sign_snapshot(wrong_cells, key), 422, "cells-out-of-domain"),
    ]
    for data, status, slug in cases:
        got, body = await push(hub, data)
        assert (got, body["type"]) == (status, PROBLEM_BASE + slug), slug
        assert body["status"] == status
    got, body = await push(hub, good, content_type="application/json")
    assert got == 415
    # Over the configured ceiling the body is not even read: the server's own 413.
    got, body = await push(hub, b"\x00" * (hub.hub.settings.max_snapshot_bytes + 2))
    assert (got, body["type"]) == (413, PROBLEM_BASE + "payload-too-large")
    assert merged(hub) == {}
    text = await metric_text(hub)
    for _, _, slug in cases:
        assert f'liberation_hub_snapshots_rejected_total{{reason="{slug}"}}' in text, slug
    assert (await push(hub, good))[0] == 202


async def test_admin_api_needs_the_token(tmp_path: Path) -> None:
    key = SigningKey.generate()
    async with run_hub(HubSettings(data_dir=tmp_path / "off", port=0, metrics_port=0), now=lambda: NOW) as off:
        async with aiohttp.ClientSession() as s, s.get(off.url + "/v1/admin/nodes") as resp:
            assert resp.status == 404 and (await resp.json())["type"] == PROBLEM_BASE + "admin-off"
    settings = HubSettings(data_dir=tmp_path / "on", port=0, metrics_port=0, admin_token=TOKEN)  # type: ignore[arg-type]
    async with run_hub(settings, now=lambda: NOW) as on, aiohttp.ClientSession() as s:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            async with s.get(on.url + "/v1/admin/nodes", headers=headers) as resp:
                assert resp.status == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        body = {"name": "alpha", "public_key": key.public.pem}
        async with s.post(on.url + "/v1/admin/nodes", json=body, headers=auth) as resp:
            assert resp.status == 201 and (await resp.json())["key_id"] == key.public.key_id
        async with s.post(on.url + "/v1/admin/nodes", json=body, headers=auth) as resp:
            assert resp.status == 409
        async with s.post(on.url + "/v1/admin/nodes", json={"name": "x", "public_key": "bm9wZQ=="}, headers=auth) as resp:
            assert resp.status == 400
        async with s.delete(on.url + "/v1/admin/nodes/nobody", headers=auth) as resp:
            assert resp.status == 404
        async with s.get(on.url + "/v1/admin/nodes", headers=auth) as resp:
            assert [n["name"] for n in (await resp.json())["nodes"]] == ["alpha"]


def test_archive_is_one_file_per_window_per_commit_and_reconciled_after_a_crash(tmp_path: Path) -> None:
    """Each commit writes one Parquet file per window; files lost to a crash are rewritten at the next
    start, and the archive then holds every accepted snapshot's cells exactly once."""
    settings = HubSettings(data_dir=tmp_path / "hub", port=0, metrics_port=0)  # type: ignore[arg-type]
    keys = [SigningKey.from_seed(bytes([i + 1]) * 32) for i in range(4)]
    hub = open_hub(settings, now=lambda: NOW)
    try:
        for i, key in enumerate(keys):
            hub.registry.enroll(f"node-{i}", key.public)
        batch = [hub.intake.check(envelope(key, w, seed=i)) for i, key in enumerate(keys) for w in (W, W + DAY)]
        outcomes = hub.intake.commit(batch[:5]) + hub.intake.commit(batch[5:])
        assert {type(o) for o in outcomes} == {IntakeResult}
        files = sorted(p.relative_to(hub.archive.root).as_posix() for p in hub.archive.root.rglob("*.parquet"))
        day = datetime.fromtimestamp(W, UTC).strftime("%Y-%m-%d")
        next_day = datetime.fromtimestamp(W + DAY, UTC).strftime("%Y-%m-%d")
        # Commit 1 took log entries 1-5 (windows W, W+1, W, W+1, W), commit 2 took 6-8.
        assert files == [
            f"window={day}/log-000000000001-000000000005.parquet",
            f"window={day}/log-000000000007-000000000007.parquet",
            f"window={next_day}/log-000000000002-000000000004.parquet",
            f"window={next_day}/log-000000000006-000000000008.parquet",
        ]
        expected = sum(len(c.rows) for c in batch)
        (hub.archive.root / files[0]).unlink()  # as if killed after the commit, before the archive
        (hub.archive.root / files[3]).unlink()
    finally:
        close_hub(hub)
    hub = open_hub(settings, now=lambda: NOW)
    try:
        rows = duckdb.sql(
            f"SELECT log_seq, count(*), count(DISTINCT node), sum(value) FROM "
            f"read_parquet('{hub.archive.root}/**/*.parquet', hive_partitioning = true) GROUP BY log_seq ORDER BY log_seq"
        ).fetchall()
        assert [r[0] for r in rows] == list(range(1, 9)) and {r[2] for r in rows} == {1}
        assert sum(r[1] for r in rows) == expected
        # Plain strings, as documented (SCHEMA), whatever Arrow types wrote them; each row names its snapshot.
        files = sorted(hub.archive.root.rglob("*.parquet"))
        assert [pq.read_schema(path) for path in files] == [SCHEMA] * len(files)
        table = pq.read_table(files, schema=SCHEMA)
        assert set(zip(*(table[c].to_pylist() for c in ("log_seq", "node", "digest", "catalog")), strict=True)) == {
            (o.log_seq, o.node, o.digest, CATALOG.hash) for o in outcomes if isinstance(o, IntakeResult)
        }
        assert set(zip(table["metric"].to_pylist(), table["kind"].to_pylist(), strict=True)) == {
            (metric.name, "cell") for metric in CATALOG.metrics
        }
        merged_total = hub.store.cursor().execute("SELECT sum(value) FROM merged").fetchall()[0][0]
        assert sum(r[3] for r in rows) == merged_total
        assert hub.archive.reconcile(hub.store, hub.catalogs) == 0  # nothing left to write
    finally:
        close_hub(hub)


IDENTITY_KEY = bytes([1]) + bytes(31)
"""The identity point: under it the signature R = identity, S = 0 verifies for any message (OpenSSL)."""


async def test_regression_small_order_keys_are_never_enrolled_nor_forge(hub: RunningHub, tmp_path: Path) -> None:
    """Review L1: the identity key and the all-zero key were enrolled (201) and a forged snapshot got 202."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as s:
        for name, raw in (("identity", IDENTITY_KEY), ("zero", bytes(32))):
            body = {"name": name, "public_key": base64.b64encode(raw).decode()}
            async with s.post(hub.url + "/v1/admin/nodes", json=body, headers=auth) as resp:
                problem = await resp.json()
                assert (resp.status, problem["type"]) == (400, PROBLEM_BASE + "invalid-key"), name
    forged_body = node_snapshot(SigningKey.generate(), W).to_bytes()
    forged = encode_canonical({"body": forged_body, "pk": IDENTITY_KEY, "sig": IDENTITY_KEY + bytes(32), "v": 1})
    status, problem = await push(hub, forged)
    assert (status, problem["type"]) == (400, PROBLEM_BASE + "invalid-signature")
    assert hub.hub.registry.nodes() == [] and merged(hub) == {}


def test_a_small_order_key_enrolled_before_the_fix_is_left_out_not_fatal(tmp_path: Path) -> None:
    settings = HubSettings(data_dir=tmp_path / "hub", port=0)  # type: ignore[arg-type]
    hub = open_hub(settings, now=lambda: NOW)
    try:
        with hub.store.transaction() as tx:
            tx.execute(
                "INSERT INTO nodes (key_id, name, public_key, enrolled) VALUES (?, ?, ?, ?)",
                [key_id_of(IDENTITY_KEY), "old", IDENTITY_KEY, 1],
            )
    finally:
        close_hub(hub)
    hub = open_hub(settings, now=lambda: NOW)  # starts; the key is not usable
    try:
        assert hub.registry.nodes() == []
    finally:
        close_hub(hub)


# ---- review H2: what an unauthenticated sender can cost, and a free event loop ----------------


def _empty_maps(size: int) -> bytes:
    """An array32 of empty maps: a Python dict each for a generic decoder, and no key at all."""
    return b"\xdd" + struct.pack(">I", size - 5) + b"\x80" * (size - 5)


def _stored(hub: Hub) -> dict[str, int]:
    con = hub.store.cursor()
    counts = {t: int(con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0])
              for t in ("envelopes", "merged", "windows", "incidents", "translog")}
    counts["archive files"] = len(list(hub.archive.root.rglob("*.parquet"))) if hub.archive.root.exists() else 0
    return counts


def test_the_size_limit_is_derived_from_the_catalogs(tmp_path: Path) -> None:
    hub = open_hub(HubSettings(data_dir=tmp_path / "hub", port=0), now=lambda: NOW)  # type: ignore[arg-type]
    try:
        assert hub.intake.max_bytes == 2 * max_envelope_size(CATALOG) < 32 * 1024  # 16,726 bytes
    finally:
        close_hub(hub)
    ceiling = HubSettings(data_dir=tmp_path / "low", port=0, max_snapshot_bytes=10_000)  # type: ignore[arg-type]
    hub = open_hub(ceiling, now=lambda: NOW)
    try:
        assert hub.intake.max_bytes == 10_000
    finally:
        close_hub(hub)


def test_regression_unauthenticated_bodies_are_refused_at_once_and_store_nothing(tmp_path: Path) -> None:
    """Review H2: an 8 MiB body of empty maps cost the hub about 11 s of CPU and +660 MiB before its key was looked up."""
    hub = open_hub(HubSettings(data_dir=tmp_path / "hub", port=0), now=lambda: NOW)  # type: ignore[arg-type]
    try:
        key = SigningKey.generate()
        hub.registry.enroll("alpha", key.public)
        hub.intake.max_bytes = 16 * 1024 * 1024  # as a hub of a catalog large enough to allow 8 MiB
        stranger = SigningKey.generate()
        big = 8 * 1024 * 1024
        layout = encode_canonical({"body": _empty_maps(big - 200), "pk": stranger.public.raw, "sig": bytes(64), "v": 1})
        forged = encode_canonical({"body": _empty_maps(big - 200), "pk": key.public.raw, "sig": bytes(64), "v": 1})
        for data, slug in (
            (_empty_maps(big), "malformed-envelope"),
            (layout, "unknown-key"),  # a valid-looking layout under a key nobody enrolled
            (forged, "invalid-signature"),  # an enrolled key, a signature that does not verify
        ):
            started = time.process_time()
            with pytest.raises(Problem) as caught:
                hub.intake.check(data)
            cpu = time.process_time() - started
            assert caught.value.slug == slug
            assert cpu < (0.5 if slug == "invalid-signature" else 0.05), (slug, cpu)  # a signature hashes 8 MiB
        assert _stored(hub) == dict.fromkeys(("envelopes", "merged", "windows", "incidents", "translog", "archive files"), 0)
    finally:
        close_hub(hub)


async def test_large_envelopes_are_checked_off_the_event_loop_and_503_when_busy(
    hub: RunningHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checks of large envelopes run in at most CHECK_SLOTS threads; one more gets 503 with Retry-After.

    What a stranger sends never takes a slot: its layout and key are refused on the loop.
    """
    monkeypatch.setattr(intake_module, "INLINE_BYTES", 1024)  # every real envelope counts as large here
    keys = [SigningKey.generate() for _ in range(3)]
    for i, key in enumerate(keys):
        await enroll(hub, f"node-{i}", key)
    gate = threading.Event()
    verify = hub.hub.intake._verify

    def held(envelope: Any, kind: Any, started: float) -> Any:
        assert threading.current_thread() is not threading.main_thread()
        gate.wait(10)
        return verify(envelope, kind, started)

    monkeypatch.setattr(hub.hub.intake, "_verify", held)
    first = [asyncio.create_task(push(hub, envelope(key, W))) for key in keys[:2]]
    try:
        for _ in range(200):
            if hub.hub.intake._checking == intake_module.CHECK_SLOTS:
                break
            await asyncio.sleep(0.01)
        assert hub.hub.intake._checking == intake_module.CHECK_SLOTS
        async with aiohttp.ClientSession() as s, s.post(
            hub.url + "/v1/snapshots", data=envelope(keys[2], W), headers={"Content-Type": "application/msgpack"}
        ) as resp:
            assert resp.status == 503 and resp.headers["Retry-After"] == "1"
            assert resp.content_type == "application/problem+json"
            assert (await resp.json())["type"] == PROBLEM_BASE + "intake-busy"
        # Strangers and junk are answered on the loop meanwhile, without a slot.
        assert (await push(hub, envelope(SigningKey.generate(), W)))[1]["type"] == PROBLEM_BASE + "unknown-key"
        assert (await push(hub, _empty_maps(12_000)))[1]["type"] == PROBLEM_BASE + "malformed-envelope"
        async with aiohttp.ClientSession() as s, s.get(hub.url + "/healthz") as resp:
            assert resp.status == 200
    finally:
        gate.set()
    assert [status for status, _ in await asyncio.gather(*first)] == [202, 202]
    assert (await push(hub, envelope(keys[2], W)))[0] == 202  # the retry
    assert 'liberation_hub_snapshots_rejected_total{reason="intake-busy"} 1.0' in await metric_text(hub)


async def test_the_largest_legal_snapshot_fits_the_derived_limit(hub: RunningHub) -> None:
    """Every cell of the default catalog published, with values far beyond any threshold: accepted."""
    key = SigningKey.generate()
    await enroll(hub, "busy", key)
    data = envelope(key, W, counts=lambda metric, i: 2**40)
    assert len(data) < hub.hub.intake.max_bytes
    assert (await push(hub, data))[0] == 202


# ---- review M4 and L4: what a snapshot declares about itself --------------------------------


def _with_metric(snapshot: Snapshot, name: str, **changes: Any) -> Snapshot:
    metrics = dict(snapshot.metrics)
    metrics[name] = metrics[name].model_copy(update=changes)
    return snapshot.model_copy(update={"metrics": metrics})


def _as_child_hub(snapshot: Snapshot, nodes: int) -> Snapshot:
    """What federation/upstream.py exports: every merged cell, the catalog's epsilon, scale and threshold (0)."""
    return snapshot.model_copy(update={"nodes": nodes})


async def test_regression_one_node_cannot_block_a_window_for_the_others(hub: RunningHub) -> None:
    """Review M4: alpha claimed nodes = 2**31 - 1 for a window (202), then every other node's snapshot of it got 422."""
    alpha, bravo, delta = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    for name, key in (("alpha", alpha), ("bravo", bravo), ("delta", delta)):
        await enroll(hub, name, key)
    for nodes in (2**31 - 1, 2):
        status, problem = await push(hub, sign_snapshot(node_snapshot(alpha, W).model_copy(update={"nodes": nodes}), alpha))
        assert (status, problem["type"]) == (422, PROBLEM_BASE + "invalid-node-count"), nodes
    for key in (bravo, delta, alpha):
        assert (await push(hub, envelope(key, W)))[0] == 202
    rows = hub.hub.store.cursor().execute("SELECT nodes FROM windows WHERE window_start = ?", [W]).fetchall()
    assert rows == [(3,)]
    # A key enrolled as a child hub may send merged snapshots, within a bound.
    child = SigningKey.generate()
    await enroll(hub, "child", child, kind="hub")
    merged_snapshot = _as_child_hub(node_snapshot(child, W - DAY), nodes=40)
    assert (await push(hub, sign_snapshot(merged_snapshot, child)))[0] == 202
    too_many = _as_child_hub(node_snapshot(child, W - 2 * DAY), nodes=intake_module.MAX_CHILD_NODES + 1)
    status, problem = await push(hub, sign_snapshot(too_many, child))
    assert (status, problem["type"]) == (422, PROBLEM_BASE + "invalid-node-count")


PARAMETER_CASES = [
    # Review L4 (probe_odd_floats.py): each of these was accepted with 202.
    pytest.param({"variance": -0.0}, id="variance-minus-zero"),
    pytest.param({"variance": 0.0}, id="variance-zero"),
    pytest.param({"epsilon": 5e-324}, id="epsilon-denormal"),
    pytest.param({"epsilon": 1e308}, id="epsilon-huge"),
    pytest.param({"scale": 5e-324}, id="scale-denormal"),
    pytest.param({"threshold": 2**63 - 1}, id="threshold-max"),
    # And near misses.
    pytest.param({"variance": "x1.000001"}, id="variance-off-by-1e-6"),
    pytest.param({"epsilon": "x0.5"}, id="epsilon-half"),
    pytest.param({"scale": "x2"}, id="scale-double"),
    pytest.param({"threshold": "+1"}, id="threshold-plus-one"),
]


def _apply(cells: Any, changes: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field, change in changes.items():
        current = getattr(cells, field)
        if isinstance(change, str) and change.startswith("x"):
            out[field] = current * float(change[1:])
        elif isinstance(change, str):
            out[field] = current + int(change)
        else:
            out[field] = change
    return out


@pytest.mark.parametrize("changes", PARAMETER_CASES)
@pytest.mark.parametrize("kind", ["node", "hub"])
def test_regression_declared_privacy_parameters_are_the_catalogs(tmp_path: Path, kind: str, changes: dict[str, Any]) -> None:
    """Review L4: the hub took a node's word for its noise (variance 0 made its values look exact; epsilon 5e-324
    is what the public log recorded). Every metric's epsilon, scale, variance and threshold must be the catalog's."""
    hub = open_hub(HubSettings(data_dir=tmp_path / "hub", port=0), now=lambda: NOW)  # type: ignore[arg-type]
    try:
        key = SigningKey.generate()
        hub.registry.enroll("alpha", key.public, kind)  # type: ignore[arg-type]
        honest = node_snapshot(key, W) if kind == "node" else _as_child_hub(node_snapshot(key, W), nodes=3)
        for metric in ("usage_events", "industry_runway"):
            cells = honest.metrics[metric]
            if kind == "hub" and "variance" in changes and changes["variance"] == "x1.000001":
                continue  # a child hub's variance is a lower bound: more is allowed
            with pytest.raises(Problem) as caught:
                hub.intake.check(sign_snapshot(_with_metric(honest, metric, **_apply(cells, changes)), key))
            assert (caught.value.status, caught.value.slug) == (422, "privacy-parameters-mismatch")
            assert caught.value.extra == {"metric": metric, "field": next(iter(changes))}
        assert _stored(hub)["translog"] == 0
        assert isinstance(hub.intake.accept(sign_snapshot(honest, key)), IntakeResult)  # the honest one still goes in
    finally:
        close_hub(hub)


def test_a_child_hubs_variance_is_at_least_a_nodes(tmp_path: Path) -> None:
    hub = open_hub(HubSettings(data_dir=tmp_path / "hub", port=0), now=lambda: NOW)  # type: ignore[arg-type]
    try:
        key = SigningKey.generate()
        hub.registry.enroll("child", key.public, "hub")
        merged_snapshot = _as_child_hub(node_snapshot(key, W), nodes=3)
        metric = CATALOG.metric("usage_events")
        more = _with_metric(merged_snapshot, metric.name, variance=3 * CATALOG.variance(metric))
        hub.intake.check(sign_snapshot(more, key))
        less = _with_metric(merged_snapshot, metric.name, variance=0.99 * CATALOG.variance(metric))
        with pytest.raises(Problem, match="at least"):
            hub.intake.check(sign_snapshot(less, key))
        empty = _with_metric(merged_snapshot, metric.name, idx=(), val=(), other_idx=(), other_val=(), variance=0.0)
        hub.intake.check(sign_snapshot(empty, key))  # no value published: nothing for a variance to describe
    finally:
        close_hub(hub)


async def test_enrollment_records_the_kind_of_key(hub: RunningHub, tmp_path: Path) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as s:
        for kind, status in (("hub", 201), ("node", 201), ("parent", 400), (1, 400)):
            key = SigningKey.generate()
            body = {"name": f"k-{kind}", "public_key": key.public.b64, "kind": kind}
            async with s.post(hub.url + "/v1/admin/nodes", json=body, headers=auth) as resp:
                answer = await resp.json()
                assert resp.status == status, kind
                if status == 201:
                    assert answer["kind"] == kind
                else:
                    assert answer["type"] == PROBLEM_BASE + "invalid-enrollment"
        async with s.post(hub.url + "/v1/admin/nodes", json={"name": "plain", "public_key": SigningKey.generate().public.b64},
                          headers=auth) as resp:
            assert (await resp.json())["kind"] == "node"  # the default
    kinds = {r.name: r.kind for r in hub.hub.registry.nodes()}
    assert kinds == {"k-hub": "hub", "k-node": "node", "plain": "node"}


def test_a_store_of_a_newer_schema_is_refused_with_a_message(tmp_path: Path) -> None:
    """A hub never guesses at a store it does not know: a schema version beyond its own is a clear error."""
    settings = HubSettings(data_dir=tmp_path / "hub", port=0)  # type: ignore[arg-type]
    hub = open_hub(settings, now=lambda: NOW)
    with hub.store.transaction() as tx:
        tx.execute("INSERT INTO schema_version VALUES (99)")
    close_hub(hub)
    with pytest.raises(StoreVersionError, match="schema version 99"):
        open_hub(settings, now=lambda: NOW)


async def test_a_child_hub_enrolled_as_a_node_changes_kind_by_enrolling_again(hub: RunningHub) -> None:
    child = SigningKey.generate()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    exported = sign_snapshot(_as_child_hub(node_snapshot(child, W), nodes=4), child)
    await enroll(hub, "region", child)  # as a node, as before kinds existed
    assert (await push(hub, exported))[1]["type"] == PROBLEM_BASE + "invalid-node-count"
    async with aiohttp.ClientSession() as s:
        body = {"name": "region", "public_key": child.public.b64, "kind": "hub"}
        async with s.post(hub.url + "/v1/admin/nodes", json=body, headers=auth) as resp:
            assert resp.status == 200 and (await resp.json())["kind"] == "hub"
        async with s.post(hub.url + "/v1/admin/nodes", json=body, headers=auth) as resp:
            assert resp.status == 409  # the same kind again: already enrolled
        async with s.post(hub.url + "/v1/admin/nodes", json=dict(body, name="other", kind="node"), headers=auth) as resp:
            assert resp.status == 409  # another name: the key is enrolled once
    assert (await push(hub, exported))[0] == 202


# ---- review L4: one window length per node ---------------------------------------------------

HOUR = 3600
WEEK = 7 * DAY
MONDAY = window_start(W, WEEK)  # the ISO week that holds W, ended before NOW


def _window(key: SigningKey, start: int, length: int, seed: int = 1, catalog: Catalog | None = None) -> bytes:
    snapshot = node_snapshot(key, W, seed=seed, catalog=catalog).model_copy(
        update={"window_start": start, "window_end": start + length}
    )
    return sign_snapshot(snapshot, key)


@pytest.fixture
async def two_lengths(tmp_path: Path) -> AsyncIterator[tuple[RunningHub, Catalog]]:
    """A hub that merges the default (daily) catalog and the same catalog with weekly windows."""
    path, weekly = weekly_catalog(tmp_path)
    settings = HubSettings(data_dir=tmp_path / "hub", port=0, metrics_port=0, admin_token=TOKEN,  # type: ignore[arg-type]
                           catalogs=(path,))
    async with run_hub(settings, now=lambda: NOW) as running:
        yield running, weekly


async def test_a_window_of_another_length_than_its_catalogs_is_refused(two_lengths: tuple[RunningHub, Catalog]) -> None:
    """(7): a daily catalog's window is one UTC day, a weekly one's an ISO week from Monday; nothing else is stored."""
    hub, weekly = two_lengths
    a = SigningKey.generate()
    await enroll(hub, "a", a)
    before = merged(hub)
    for start, length, catalog in (
        (W + 5 * HOUR, HOUR, None),  # an hour of the daily catalog
        (W, WEEK, weekly),  # seven days from a Saturday: not an ISO week
        (MONDAY, DAY, weekly),  # a day under the weekly catalog
        (MONDAY, WEEK, None),  # a week under the daily catalog
    ):
        status, problem = await push(hub, _window(a, start, length, catalog=catalog))
        assert (status, problem["type"]) == (422, PROBLEM_BASE + "window-out-of-range"), (start, length)
    assert merged(hub) == before
    assert (await push(hub, _window(a, MONDAY, WEEK, catalog=weekly)))[0] == 202


async def test_regression_a_node_cannot_send_a_day_and_the_week_of_it(two_lengths: tuple[RunningHub, Catalog]) -> None:
    """Review L4 (probe_window_overlap.py): node a posted day D and a window holding D; both merged, a's data counted twice.

    One catalog has one window length, so this takes two catalogs: a daily and a weekly one.
    """
    hub, weekly = two_lengths
    a, c = SigningKey.generate(), SigningKey.generate()
    await enroll(hub, "a", a)
    await enroll(hub, "c", c)
    assert (await push(hub, _window(a, W, DAY)))[0] == 202

    def tables() -> dict[str, int]:  # the archive trails the answers by a batch: the tables tell
        return {name: n for name, n in _stored(hub.hub).items() if name != "archive files"}

    before = (merged(hub), tables())
    status, problem = await push(hub, _window(a, MONDAY, WEEK, catalog=weekly))  # the week that holds D
    assert (status, problem["type"]) == (422, PROBLEM_BASE + "overlapping-window")
    assert problem["window_start"] == MONDAY
    assert (merged(hub), tables()) == before  # a refused snapshot stores nothing
    # The week first, then one of its days: refused the other way round too; other weeks' days are fine.
    assert (await push(hub, _window(c, MONDAY - WEEK, WEEK, catalog=weekly)))[0] == 202
    assert (await push(hub, _window(c, MONDAY - 3 * DAY, DAY)))[1]["type"] == PROBLEM_BASE + "overlapping-window"
    assert (await push(hub, _window(c, MONDAY, DAY)))[0] == 202  # starts where the week ends
    assert (await push(hub, _window(a, W + DAY, DAY)))[0] == 202  # a's next day
    assert 'liberation_hub_snapshots_rejected_total{reason="overlapping-window"} 2.0' in await metric_text(hub)


def test_overlapping_windows_within_one_commit(tmp_path: Path) -> None:
    path, weekly = weekly_catalog(tmp_path)
    hub = open_hub(HubSettings(data_dir=tmp_path / "hub", port=0, catalogs=(path,)), now=lambda: NOW)  # type: ignore[arg-type]
    try:
        a, b = SigningKey.generate(), SigningKey.generate()
        hub.registry.enroll("a", a.public)
        hub.registry.enroll("b", b.public)
        batch = [hub.intake.check(data) for data in (
            _window(a, W, DAY), _window(a, MONDAY, WEEK, catalog=weekly), _window(b, MONDAY, WEEK, catalog=weekly),
            _window(a, W, DAY),
        )]
        outcomes = hub.intake.commit(batch)
        assert [o.status if isinstance(o, IntakeResult) else o.slug for o in outcomes] == [
            "accepted", "overlapping-window", "accepted", "duplicate",
        ]
        assert _stored(hub)["translog"] == 2
    finally:
        close_hub(hub)
