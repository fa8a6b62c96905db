"""Snapshot export: thresholds, commitment (byte-identical re-export), ledger cap, salts, tamper alarm."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from node.export import (
    BudgetExceeded,
    ExportError,
    Publisher,
    WindowNotClosed,
)
from node.noising import build_snapshot
from node.published import PublishedLog
from node.salts import SaltKeeper
from node.schema import session_log_table, session_table, session_tables
from node.store import Store
from node.windows import Windows
from protocol.catalog import load_catalog
from protocol.envelope import verify_envelope
from protocol.keys import SigningKey
from protocol.noise import laplace_variance
from runtime.dp import opendp_laplace
from tests.factories import NOW, WINDOW, ev, filtered, store_with
from tests.seeded_noise import SeededLaplace

CATALOG = load_catalog()
W = int(WINDOW.timestamp())
DAY = 86_400


def busy_window() -> list[dict[str, object]]:
    out = []
    for s in range(400):
        app, spec = list(CATALOG.apps.items())[s % 3]
        for j, action in enumerate(spec.actions):
            out.append(ev(f"s{s}", app, action, s % 1000 + j, geo="DE" if s % 2 else "KE",
                          runway_months=s % 24, industry="tech", salary=50_000 + 100 * s,
                          debt_level="high", savings_band="5k-10k"))
    return out


def publisher(store: Store, tmp: Path, *, cap: float = 1.0, clock: Callable[[], datetime] = lambda: NOW,
              seed: int | None = 7, key: SigningKey | None = None, retention_days: int = 7) -> Publisher:
    record = PublishedLog(tmp / "keys" / "published.log")
    windows = Windows(store, SaltKeeper(tmp / "salts"), window_seconds=DAY, grace_seconds=3600,
                      retention_seconds=retention_days * DAY, clock=clock,
                      published=[entry.window_start for entry in record.entries()])
    return Publisher(
        store=store, catalog=CATALOG, key=key or SigningKey.from_seed(bytes(32)), windows=windows,
        epsilon_cap_per_day=cap, sampler=SeededLaplace(seed) if seed is not None else opendp_laplace, record=record,
    )


def test_every_noisy_cell_of_every_domain_is_published(tmp_path: Path) -> None:
    store = store_with(tmp_path, busy_window())
    envelope = publisher(store, tmp_path, seed=None).export(W)  # the real OpenDP sampler
    snapshot = verify_envelope(envelope).snapshot
    assert snapshot.catalog == CATALOG.hash and snapshot.nodes == 1 and snapshot.seq == 1
    assert (snapshot.window_start, snapshot.window_end) == (W, W + DAY)
    assert set(snapshot.metrics) == {m.name for m in CATALOG.metrics}
    negative = 0
    for metric in CATALOG.metrics:
        cells = snapshot.metrics[metric.name]
        assert cells.threshold == CATALOG.threshold(metric) == 0  # nothing suppressed
        assert cells.scale == pytest.approx(CATALOG.scale(metric))
        assert cells.epsilon == pytest.approx(CATALOG.epsilon(metric))
        assert cells.variance == pytest.approx(laplace_variance(cells.scale))
        assert cells.idx == tuple(range(CATALOG.domain_size(metric)))  # every cell, zeros included
        assert (cells.other_idx, cells.other_val) == ((), ())
        negative += sum(v < 0 for v in cells.val)
    assert negative > 0  # noisy empty cells are published as drawn, negatives included (unbiased sums)


def test_reexport_is_byte_identical_and_survives_restart(tmp_path: Path) -> None:
    store = store_with(tmp_path, busy_window())
    first = publisher(store, tmp_path, seed=1).export(W)
    assert publisher(store, tmp_path, seed=999).export(W) == first
    path = store.path
    store.close()
    reopened = Store(path, CATALOG)
    assert publisher(reopened, tmp_path, seed=12345).export(W) == first


def test_sequence_numbers_increase_and_every_window_is_exported(tmp_path: Path) -> None:
    raw = busy_window() + [ev("late", "runway-calculator", "start", 3 * 1440 + 5)]  # a later window
    store = store_with(tmp_path, raw)
    clock = lambda: WINDOW + timedelta(days=5, hours=2)  # noqa: E731
    pub = publisher(store, tmp_path, clock=clock, cap=1.0)
    due = pub.windows.due()
    # Every window from the first with data up to the last closed one, empty ones included.
    assert due == [W + i * DAY for i in range(5)]
    seqs = [verify_envelope(pub.export(w)).snapshot.seq for w in due]
    assert seqs == [1, 2, 3, 4, 5]
    assert pub.windows.due() == []


def test_open_windows_are_not_exported(tmp_path: Path) -> None:
    store = store_with(tmp_path, busy_window())
    pub = publisher(store, tmp_path, clock=lambda: WINDOW + timedelta(days=1, minutes=30))
    with pytest.raises(WindowNotClosed):
        pub.export(W)  # ended 30 minutes ago: still in its grace hour
    assert pub.windows.due() == []


def test_ledger_refuses_an_over_cap_export(tmp_path: Path) -> None:
    store = store_with(tmp_path, busy_window())
    # A node without keepers spends the community epsilon (0.5) per window.
    with pytest.raises(ExportError, match="below one window's epsilon"):
        publisher(store, tmp_path, cap=0.25)  # no window could ever be exported: refused at start
    pub = publisher(store, tmp_path, cap=0.5)
    with store.transaction() as tx:  # the day's budget spent already (say, by a window of another length)
        tx.execute("INSERT INTO ledger VALUES (?, 'usage', 0.25, 1.0, 1, 'x', 'd', 0)", [W + 3600])
    with pytest.raises(BudgetExceeded, match="over the cap of 0.5"):
        pub.export(W)
    with store.transaction() as tx:
        tx.execute("DELETE FROM ledger")
    assert store.cursor().execute("SELECT count(*) FROM snapshots").fetchall() == [(0,)]
    assert pub.ledger() == []
    ok = publisher(store, tmp_path, cap=1.0)
    ok.export(W)
    entries = ok.ledger()
    assert len(entries) == len(CATALOG.metrics)
    assert sum(e.epsilon for e in entries) == pytest.approx(CATALOG.epsilon_community)
    assert {e.catalog for e in entries} == {CATALOG.hash}
    assert ok.spent(W) == pytest.approx(CATALOG.epsilon_community)


def test_export_destroys_salt_and_session_state(tmp_path: Path) -> None:
    store = store_with(tmp_path, busy_window())
    pub = publisher(store, tmp_path)
    salt = pub.windows.salts.get(WINDOW)
    assert len(salt) == 32 and pub.windows.salts.days() == [WINDOW.date()]
    store.fold_sessions()
    store.commit_events(filtered(CATALOG, busy_window()[:1]))  # folded state and logged rows both present
    assert session_tables(store.cursor()) == [W]
    assert store.cursor().execute(f"SELECT count(*) FROM {session_table(W)}").fetchall()[0][0] > 0
    assert store.cursor().execute(f"SELECT count(*) FROM {session_log_table(W)}").fetchall()[0][0] == 1
    pub.export(W)
    assert pub.windows.salts.days() == []
    assert not any((tmp_path / "salts").iterdir())
    assert session_tables(store.cursor()) == []
    # Raw rows stay until the retention horizon, then go.
    assert store.row_count() > 0
    late = publisher(store, tmp_path, clock=lambda: WINDOW + timedelta(days=9))
    assert late.windows.expire() == []  # exported: nothing abandoned, its rows simply go
    assert store.row_count() == 0


def test_snapshot_builder_rejects_a_short_table(tmp_path: Path) -> None:
    tables = {m.name: [0] * CATALOG.domain_size(m) for m in CATALOG.metrics}
    tables["geo_sessions"] = [0, 0]
    with pytest.raises(ValueError, match="geo_sessions"):
        build_snapshot(CATALOG, tables, node="0" * 32, window_start=W, window_end=W + DAY, seq=1, created=0)


def test_opendp_noise_variance_and_shape() -> None:
    scale = 16.7
    draws = opendp_laplace([0] * 60_000, scale)
    assert all(isinstance(x, int) for x in draws[:100])
    expected = laplace_variance(scale)
    assert statistics.pvariance(draws) == pytest.approx(expected, rel=0.05)
    assert abs(statistics.fmean(draws)) < 0.5
    a = 2.718281828459045 ** (-1 / scale)
    p_zero = draws.count(0) / len(draws)
    assert p_zero == pytest.approx((1 - a) / (1 + a), abs=0.005)


def test_tampered_stored_snapshot_is_neither_served_nor_pushed(tmp_path: Path) -> None:
    store = store_with(tmp_path, busy_window())
    pub = publisher(store, tmp_path)
    envelope = pub.export(W)
    tampered = bytearray(envelope)
    tampered[len(tampered) // 2] ^= 0x01
    with store.transaction() as tx:
        tx.execute("UPDATE snapshots SET envelope = ? WHERE window_start = ?", [bytes(tampered), W])
    assert pub.verified(W) is None
    assert pub.stored(W) == bytes(tampered)  # kept as evidence; the push side is in test_outbox.py
