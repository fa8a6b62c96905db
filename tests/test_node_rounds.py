"""A node's contribution to a federation round: built at export from the snapshot's own bounded tables,
committed with it, and nothing kept that could unmask it."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from node.aggregate import true_tables
from node.export import KeepersUnknown, Publisher
from node.keepers import KeeperDirectory
from node.published import PublishedLog
from node.salts import SaltKeeper
from node.store import Store
from node.windows import Windows
from protocol.catalog import load_catalog
from protocol.keys import SigningKey
from protocol.rounds import KeeperKey, federation_vector, mask, open_seed, seal_info, vector_of, verify_contribution
from tests.factories import NOW, WINDOW, ev, store_with
from tests.seeded_noise import SeededLaplace

CATALOG = load_catalog()
W = int(WINDOW.timestamp())
DAY = 86_400


def keeper(seed: bytes) -> tuple[KeeperKey, X25519PrivateKey]:
    identity = SigningKey.from_seed(hashlib.sha256(b"id" + seed).digest())
    sealing = X25519PrivateKey.from_private_bytes(hashlib.sha256(b"seal" + seed).digest())
    raw = sealing.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KeeperKey.issue(identity, raw), sealing


def listing(*statements: KeeperKey) -> dict[str, object]:
    """What a hub's GET /v1/keepers says."""
    return {"keepers": [
        {"key_id": k.key_id, "public_key": k.identity.b64, "hpke_key": base64.b64encode(k.hpke).decode(),
         "hpke_signature": base64.b64encode(k.signature).decode()} for k in statements
    ]}


def events() -> list[dict[str, object]]:
    out = []
    for s in range(120):
        app, spec = list(CATALOG.apps.items())[s % 3]
        for j, action in enumerate(spec.actions):
            out.append(ev(f"s{s}", app, action, s % 900 + j, geo="BR" if s % 3 else "KE", runway_months=s % 20,
                          industry="retail", debt_level="low"))
    return out


def publisher(store: Store, tmp: Path, keepers: KeeperDirectory, *, clock: Callable[[], datetime] = lambda: NOW,
              seed_source: Callable[[int], bytes] | None = None) -> Publisher:
    record = PublishedLog(tmp / "keys" / "published.log")
    windows = Windows(store, SaltKeeper(tmp / "salts"), window_seconds=DAY, grace_seconds=3600,
                      retention_seconds=7 * DAY, clock=clock, published=[e.window_start for e in record.entries()])
    extra = {"seed_source": seed_source} if seed_source is not None else {}
    return Publisher(store=store, catalog=CATALOG, key=SigningKey.from_seed(b"n" * 32), windows=windows,
                     epsilon_cap_per_day=1.0, sampler=SeededLaplace(3), record=record, keepers=keepers,
                     keeper_wait_seconds=DAY, **extra)  # type: ignore[arg-type]


def test_the_contribution_is_the_snapshots_bounded_tables_masked_and_committed(tmp_path: Path) -> None:
    store = store_with(tmp_path, events())
    (k1, s1), (k2, s2) = keeper(b"1"), keeper(b"2")
    directory = KeeperDirectory(store, [k1.key_id, k2.key_id])
    assert directory.learn(listing(k1, k2)) == sorted([k1.key_id, k2.key_id])
    x = np.array(federation_vector(CATALOG, true_tables(store.cursor(), CATALOG, W)), dtype=np.int64)
    drawn: list[bytes] = []

    def recording(n: int) -> bytes:
        drawn.append(bytes(np.random.default_rng(len(drawn)).integers(0, 256, n, dtype=np.uint8)))
        return drawn[-1]

    pub = publisher(store, tmp_path, directory, seed_source=recording)
    snapshot = pub.export(W)
    contribution = pub.contribution(W)
    assert contribution is not None and len(drawn) == 2
    # Committed: a re-export, and a restart, give the same bytes; no seed is drawn again.
    assert pub.export(W) == snapshot and pub.contribution(W) == contribution
    assert publisher(store, tmp_path, directory, seed_source=recording).contribution(W) == contribution
    assert len(drawn) == 2
    verified = verify_contribution(contribution, max_size=1 << 20)
    c = verified.contribution
    assert (c.node, c.window_start, c.window_end, c.keepers) == (
        pub.key.public.key_id, W, W + DAY, tuple(sorted([k1.key_id, k2.key_id])))
    # The keepers, and only they, can take the masks off: what is left is the export's own bounded x.
    y = vector_of(c.y, CATALOG.federation_size).copy()
    for statement, sealing in ((k1, s1), (k2, s2)):
        sealed = c.sealed_for(statement.key_id)
        assert sealed is not None
        y -= mask(open_seed(sealed, sealing, seal_info(c.round, c.node, statement.key_id)), CATALOG.federation_size)
    assert np.array_equal(y.view(np.int64), x) and x.sum() > 0
    # The ledger records both spends, and the record of published windows their sum.
    ledger = pub.ledger()
    rounds = [e for e in ledger if e.metric.startswith("round:")]
    assert len(rounds) == len(CATALOG.federation_metrics) and {e.digest for e in rounds} == {verified.digest}
    assert sum(e.epsilon for e in rounds) == pytest.approx(CATALOG.epsilon_federation)
    assert pub.spent(W) == pytest.approx(CATALOG.epsilon_per_window)
    assert pub.record.get(W).epsilon == pytest.approx(CATALOG.epsilon_per_window)  # type: ignore[union-attr]
    store.close()
    # Nothing kept could unmask it: no seed, and no mask, in any file the node wrote.
    masks = [mask(seed, 4).tobytes() for seed in drawn]
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in [*drawn, *masks]:
                assert secret not in data, path


def test_a_window_waits_for_its_keepers_keys_then_goes_without(tmp_path: Path) -> None:
    store = store_with(tmp_path, events())
    k1, _ = keeper(b"1")
    directory = KeeperDirectory(store, [k1.key_id])
    pub = publisher(store, tmp_path, directory, clock=lambda: WINDOW + timedelta(days=1, hours=2))
    with pytest.raises(KeepersUnknown, match=k1.key_id):
        pub.export(W)
    assert pub.stored(W) is None  # nothing exported, nothing spent
    late = publisher(store, tmp_path, directory, clock=lambda: WINDOW + timedelta(days=2, hours=2))
    late.export(W)
    assert late.contribution(W) is None and late.spent(W) == pytest.approx(CATALOG.epsilon_community)


def test_only_pinned_keepers_whose_identity_signed_their_key_are_learned(tmp_path: Path) -> None:
    store = Store(tmp_path / "node.duckdb", CATALOG)
    (k1, _), (k2, _), (k3, _) = keeper(b"1"), keeper(b"2"), keeper(b"3")
    directory = KeeperDirectory(store, [k1.key_id, k2.key_id])
    swapped = KeeperKey(k2.identity, k3.hpke, k2.signature)  # a hub slipping in a sealing key it holds
    assert directory.learn(listing(k1, swapped, k3)) == [k1.key_id]
    assert directory.known() is None and directory.missing() == [k2.key_id]
    assert directory.learn(listing(k2)) == [k2.key_id]
    assert [k.key_id for k in directory.known() or []] == sorted([k1.key_id, k2.key_id])
    assert directory.learn({"keepers": "nonsense"}) == [] and directory.learn([1, 2]) == []
    # Kept in the store: known again after a restart, without the hub.
    assert KeeperDirectory(store, [k1.key_id, k2.key_id]).known() == directory.known()
