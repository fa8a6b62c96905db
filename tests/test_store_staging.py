"""The node store's staging: acks wait on a stage file append; drains move rows into `events` exactly once."""

from __future__ import annotations

import resource
import signal
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from node import pacing, stagelog
from node.privacy import FilteredEvent
from node.schema import ROW_GROUP_ROWS, session_log_table, stage_path
from node.store import Store
from protocol.catalog import load_catalog
from runtime.storage import Database

WINDOW = datetime(2026, 11, 23, tzinfo=UTC)
W = int(WINDOW.timestamp())


def staged(store: Store, sessions: range) -> None:
    """Commit one event per session to the active stage, as the writer does."""
    events = [FilteredEvent(WINDOW, WINDOW, i % 60, i, "runway-calculator", "start", "DE", {}) for i in sessions]
    store.stage_rows([store.layout.table([store.layout.block(events)])])


def crash(store: Store) -> None:
    """Close the store's files as a killed process would leave them: no drain on the way out."""
    for stage in store.staging._stages:
        stage.close()
    Database.close(store)


def stored(store: Store) -> list[tuple[int, int]]:
    return store.cursor().execute("SELECT seq, session FROM events ORDER BY seq").fetchall()


def test_staged_rows_reach_events_and_the_session_log_on_drain(tmp_path: Path) -> None:
    store = Store(tmp_path / "node.duckdb", load_catalog())
    try:
        staged(store, range(0, 5))
        staged(store, range(5, 8))
        assert stored(store) == []  # acked (durable in the stage), not moved yet
        assert store.row_count() == 8 and store.staged_rows == 8
        assert store.drain() == 8
        assert stored(store) == [(i + 1, i) for i in range(8)]
        log = store.cursor().execute(f"SELECT count(*) FROM {session_log_table(W)}").fetchall()
        assert log == [(8,)]
        assert store.staged_rows == 0 and store.drain() == 0
        for stage in store.staging._stages:  # drained stages are emptied
            assert stage.records() == []
    finally:
        store.close()
    assert stage_path(tmp_path / "node.duckdb", 0).exists()


def test_a_crash_between_the_move_and_clearing_the_stage_moves_nothing_twice(tmp_path: Path) -> None:
    path = tmp_path / "node.duckdb"
    store = Store(path, load_catalog())
    staged(store, range(0, 50))
    store.staging._move([0, 1])  # the move committed ...
    assert store.row_count() == 50  # each row counted once, moved and not yet cleared
    crash(store)  # ... and the process died before the stage was cleared
    reopened = Store(path, load_catalog())
    try:
        rows = stored(reopened)
        assert rows == [(i + 1, i) for i in range(50)]  # each row once
        staged(reopened, range(50, 52))
        reopened.drain()
        assert [seq for seq, _ in stored(reopened)] == list(range(1, 53))  # numbering goes on
    finally:
        reopened.close()


def test_rows_staged_at_a_crash_move_at_the_next_open(tmp_path: Path) -> None:
    path = tmp_path / "node.duckdb"
    store = Store(path, load_catalog())
    staged(store, range(0, 30))
    crash(store)  # killed with every row still staged
    reopened = Store(path, load_catalog())
    try:
        assert stored(reopened) == [(i + 1, i) for i in range(30)]
        assert reopened.staged_rows == 0
    finally:
        reopened.close()


def test_a_failed_drain_keeps_rows_staged_and_the_next_drain_moves_them_first(tmp_path: Path) -> None:
    store = Store(tmp_path / "node.duckdb", load_catalog())
    try:
        # A view where the window's session log belongs: the move's insert fails.
        store.cursor().execute(f"CREATE VIEW {session_log_table(W)} AS SELECT 1 AS x")
        staged(store, range(0, 10))
        with pytest.raises(duckdb.Error):
            store.drain()
        assert stored(store) == [] and store.staged_rows == 10
        staged(store, range(10, 15))  # the writer goes on, into the other stage
        assert store.staged_rows == 15
        store.cursor().execute(f"DROP VIEW {session_log_table(W)}")
        assert store.drain() == 15
        assert stored(store) == [(i + 1, i) for i in range(15)]
    finally:
        store.close()


def test_close_drains_so_the_store_file_stands_alone(tmp_path: Path) -> None:
    path = tmp_path / "node.duckdb"
    store = Store(path, load_catalog())
    staged(store, range(0, 7))
    store.close()
    con = duckdb.connect(str(path), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM events").fetchall() == [(7,)]
    finally:
        con.close()


def test_a_torn_last_record_is_cut_and_appends_go_on_after_the_good_ones(tmp_path: Path) -> None:
    path = tmp_path / "node.duckdb"
    store = Store(path, load_catalog())
    staged(store, range(0, 10))
    good = stage_path(path, 0).stat().st_size
    staged(store, range(10, 30))
    crash(store)
    # The last append was cut short by the crash (and so never acknowledged): half its bytes reached the disk.
    with open(stage_path(path, 0), "r+b") as f:
        f.truncate(good + (stage_path(path, 0).stat().st_size - good) // 2)
    reopened = Store(path, load_catalog())
    try:
        assert stored(reopened) == [(i + 1, i) for i in range(10)]
        staged(reopened, range(30, 33))
        reopened.drain()
        assert stored(reopened)[10:] == [(11, 30), (12, 31), (13, 32)]
    finally:
        reopened.close()


def test_a_record_that_fails_its_checksum_ends_what_is_read(tmp_path: Path) -> None:
    path = tmp_path / "node.duckdb"
    store = Store(path, load_catalog())
    staged(store, range(0, 4))
    second = stage_path(path, 0).stat().st_size
    staged(store, range(4, 8))
    staged(store, range(8, 12))
    crash(store)
    with open(stage_path(path, 0), "r+b") as f:
        f.seek(second + 40)  # inside the second record's rows
        byte = f.read(1)
        f.seek(second + 40)
        f.write(bytes([byte[0] ^ 0xFF]))
    reopened = Store(path, load_catalog())
    try:
        assert stored(reopened) == [(i + 1, i) for i in range(4)]
    finally:
        reopened.close()


def test_a_failed_append_leaves_nothing_behind_it(tmp_path: Path) -> None:
    path = tmp_path / "node.duckdb"
    store = Store(path, load_catalog())
    staged(store, range(0, 3))
    end = stage_path(path, 0).stat().st_size
    # A real failed write: the file may grow by 100 bytes only (as on a full disk, with EFBIG for ENOSPC).
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (end + 100, hard))
    try:
        with pytest.raises(OSError):
            staged(store, range(3, 6))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert stage_path(path, 0).stat().st_size == end  # the half-written record is gone
    assert store.staged_rows == 3
    crash(store)  # had the record stayed, these unacknowledged rows would be stored at the next open
    reopened = Store(path, load_catalog())
    try:
        assert stored(reopened) == [(1, 0), (2, 1), (3, 2)]
        staged(reopened, range(6, 8))
        reopened.drain()
        assert stored(reopened)[3:] == [(4, 6), (5, 7)]
    finally:
        reopened.close()


def test_a_stage_file_holds_exactly_its_acked_records_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A drain takes the rows from memory only when they are the file's: same rows, same order; else it reads the file."""
    path = tmp_path / "node.duckdb"
    store = Store(path, load_catalog())
    try:
        for start in range(0, 600, 2):  # more appends than are kept apart before merging
            staged(store, range(start, start + 2))
        stage = store.staging._stages[store.staging._active]
        held = stage.held()
        assert held is not None
        from_file = pa.Table.from_batches([batch for _, batch in stage.records()])
        assert held.equals(from_file)
        assert store.drain() == 600
        assert stored(store) == [(i + 1, i) for i in range(600)]
        assert stage.held() is not None and stage.held().num_rows == 0  # emptied with its file

        # Past the memory bound a stage stops holding its rows, and a drain reads the file.
        monkeypatch.setattr(stagelog, "HELD_BYTES", 1)
        staged(store, range(600, 610))
        assert store.staging._stages[store.staging._active].held() is None
        assert store.drain() == 10
        assert [s for _, s in stored(store)] == list(range(610))
        monkeypatch.undo()
        staged(store, range(610, 615))
        crash(store)
    except BaseException:
        store.close()
        raise
    # A file opened with records in it is read, not trusted to memory.
    reopened = Store(path, load_catalog())
    try:
        assert [s for _, s in stored(reopened)] == list(range(615))
    finally:
        reopened.close()


def test_a_paced_drain_rests_between_slices_outside_its_transactions_only_while_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Background drains leave the cores to requests between slices, never holding the write lock (and so a
    transaction) while they rest, unless the stages fill faster than they move."""
    store = Store(tmp_path / "node.duckdb", load_catalog())
    rests: list[float] = []

    def sleep(seconds: float) -> None:
        assert not store._lock.locked(), "rested inside a transaction"
        rests.append(seconds)

    monkeypatch.setattr(pacing.time, "sleep", sleep)
    behind: list[bool] = []
    paced = pacing.Pacing(urgent=lambda: bool(behind))
    try:
        rows = 3 * ROW_GROUP_ROWS + 10  # four slices
        staged(store, range(rows))
        assert store.drain() == rows and rests == []  # not paced: the caller waits on it
        staged(store, range(rows, 2 * rows))
        assert store.drain(rest=paced) == rows
        assert len(rests) == 3 and all(r > 0 for r in rests)  # after every slice but the last
        # Behind: the writer staged a drain's worth again while this drain's rows wait to move.
        rests.clear()
        behind.append(True)
        staged(store, range(2 * rows, 3 * rows))
        assert store.drain(rest=paced) == rows
        assert rests == []
        assert [seq for seq, _ in stored(store)] == list(range(1, 3 * rows + 1))
    finally:
        store.close()


def test_a_crash_mid_drain_keeps_the_slices_it_committed_and_moves_the_rest_once(tmp_path: Path) -> None:
    """Each slice commits with the raised mark: a drain killed between slices loses and doubles nothing."""
    path = tmp_path / "node.duckdb"
    store = Store(path, load_catalog())
    rows = 2 * ROW_GROUP_ROWS + 5

    class Killed(Exception):
        pass

    def die(elapsed: float) -> None:
        raise Killed

    staged(store, range(rows))
    with pytest.raises(Killed):
        store.drain(rest=die)  # dies after the first slice committed
    assert len(stored(store)) == ROW_GROUP_ROWS
    crash(store)
    reopened = Store(path, load_catalog())
    try:
        assert [seq for seq, _ in stored(reopened)] == list(range(1, rows + 1))
    finally:
        reopened.close()


def test_held_rows_stay_in_order_when_small_and_big_appends_mix(tmp_path: Path) -> None:
    """Small appends are merged by count or by rows, a big one is kept as it is: the memory copy is the file's."""
    store = Store(tmp_path / "node.duckdb", load_catalog())
    try:
        sizes = [3] * 10 + [20_000] + [7] * 300 + [9_000, 9_000] + [1]
        start = 0
        for size in sizes:
            staged(store, range(start, start + size))
            start += size
        stage = store.staging._stages[store.staging._active]
        held = stage.held()
        assert held is not None
        assert held.equals(pa.Table.from_batches([batch for _, batch in stage.records()]))
        assert store.drain() == start
        assert [s for _, s in stored(store)] == list(range(start))
    finally:
        store.close()
