"""Deletion is physical: after export and retention no byte of a deleted window's rows is left in the data dir."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import duckdb

from node.compaction import compact_path
from node.privacy import FilteredEvent, session_hash
from node.store import Store
from protocol.catalog import load_catalog
from tests.servers import Process

SESSIONS, EVENTS = 300, 10


def yesterday() -> datetime:
    return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)


def history(day: datetime) -> str:
    """SESSIONS marked sessions of `day`, EVENTS events each, as `liberation node import` reads them."""
    lines = []
    for s in range(SESSIONS):
        start = day + timedelta(hours=1 + s % 20, minutes=s % 50)
        for e in range(EVENTS):
            lines.append(json.dumps({
                "app": "runway-calculator", "action": ("start", "calculate", "complete")[min(e, 2)],
                "attributes": {"runway_months": 3 + e, "savings_band": "5k-10k", "industry": "tech"},
                "timestamp": (start + timedelta(minutes=e)).isoformat(), "geo_hint": "KE",
                "session_id": f"sess_at_rest_{s:05d}",
            }))
    return "\n".join(lines) + "\n"


def occurrences(root: Path, needles: list[bytes]) -> dict[bytes, int]:
    """How often each needle appears in the bytes of every file under `root`."""
    counts = dict.fromkeys(needles, 0)
    for path in (p for p in root.rglob("*") if p.is_file()):
        content = path.read_bytes()
        for needle in needles:
            counts[needle] += content.count(needle)
    return counts


async def test_no_session_hash_of_a_deleted_window_is_left_on_disk(tmp_path: Path) -> None:
    """Review M2: 300 of 300 hashes of a deleted day were still in node.duckdb, 11 copies each."""
    data_dir, day = tmp_path / "node", yesterday()
    subprocess.run(
        [sys.executable, "-m", "liberation", "node", "import", "-", "--data-dir", str(data_dir)],
        input=history(day), capture_output=True, text=True, timeout=120, check=True,
    )
    salt = (data_dir / "salts" / f"{day.date().isoformat()}.salt").read_bytes()
    hashes = [session_hash(salt, f"sess_at_rest_{s:05d}".encode()).to_bytes(8, "little", signed=True)
              for s in range(SESSIONS)]
    # The scan sees them while they are live (in the rows and the session state; DuckDB
    # compresses a session's run of equal hashes, so not once per event).
    before = occurrences(data_dir, hashes)
    assert all(count >= 1 for count in before.values()), sorted(before.values())[:5]

    proc = Process(["node", "serve"], tmp_path / "node.log", env={
        "LIBERATION_NODE_DATA_DIR": str(data_dir), "LIBERATION_NODE_PORT": "0",
        "LIBERATION_NODE_RATE_LIMIT__REQUESTS_PER_SECOND": "0",
        # The first pass exports yesterday and deletes its rows at once.
        "LIBERATION_NODE_EXPORT_GRACE_SECONDS": "0", "LIBERATION_NODE_RETENTION_DAYS": "0",
    })
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 60
            while True:  # exported by the first pass; a stop lets the pass finish (retention and all)
                async with session.get(f"{proc.url}/v1/snapshots/{day.date().isoformat()}") as resp:
                    if resp.status == 200:
                        break
                assert time.monotonic() < deadline, "yesterday was not exported within 60 s"
                time.sleep(0.1)
            # Live rows of today go on: in the stage files and the store beside the scan.
            live = [{"app": "runway-calculator", "action": "start", "attributes": {},
                     "timestamp": datetime.now(UTC).isoformat(), "session_id": f"sess_live_{i:04d}"} for i in range(50)]
            async with session.post(proc.url + "/v1/events", json=live) as resp:
                assert resp.status == 202
    finally:
        assert proc.stop() == 0

    assert not (data_dir / "salts" / f"{day.date().isoformat()}.salt").exists()
    con = duckdb.connect(str(data_dir / "node.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM events WHERE window_start = ?", [int(day.timestamp())]).fetchall() == [(0,)]
        assert con.execute("SELECT count(*) FROM events").fetchall() == [(50,)]  # today's, drained at shutdown
        assert con.execute("SELECT count(*) FROM snapshots").fetchall() == [(1,)]
    finally:
        con.close()
    after = occurrences(data_dir, hashes)
    assert sum(after.values()) == 0, f"{sum(1 for c in after.values() if c)} of {SESSIONS} hashes still on disk"


def test_readers_keep_their_cursors_while_the_file_is_rewritten(tmp_path: Path) -> None:
    catalog = load_catalog()
    store = Store(tmp_path / "node.duckdb", catalog)
    window = datetime(2026, 11, 23, tzinfo=UTC)
    events = [FilteredEvent(window, window, i % 60, i, "runway-calculator", "start", "DE", {}) for i in range(50_000)]
    store.commit_events(events)
    held = store.cursor()  # taken before the rewrites, used after them
    errors: list[BaseException] = []
    counts: set[int] = set()
    stop = threading.Event()

    def read() -> None:
        held = store.cursor()  # a cursor is one thread's: each reader takes its own before the rewrites
        while not stop.is_set():
            try:
                counts.add(int(held.execute("SELECT count(*) FROM events").fetchall()[0][0]))
                counts.add(int(store.cursor().execute("SELECT count(*) FROM events").fetchall()[0][0]))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return

    readers = [threading.Thread(target=read) for _ in range(2)]
    try:
        for reader in readers:
            reader.start()
        for day in range(1, 4):
            later = window + timedelta(days=day)
            store.commit_events([FilteredEvent(later, later, 0, i, "runway-calculator", "start", "DE", {}) for i in range(10)])
            with store.transaction() as tx:
                store.delete_rows(tx, until=0)  # nothing to delete: no mark
            assert not store.erase_pending()
            with store.transaction() as tx:
                store.drop_session_state(tx, int(later.timestamp()))
            assert store.erase_pending()
            store.compact()
            assert not store.erase_pending()
    finally:
        stop.set()
        for reader in readers:
            reader.join()
    assert errors == [] and counts <= {50_000 + 10 * day for day in range(4)}
    assert held.execute("SELECT count(*) FROM events").fetchall() == [(50_030,)]
    assert not compact_path(store.path).exists()
    store.close()


def test_a_rewrite_left_by_a_crash_is_removed_at_open(tmp_path: Path) -> None:
    catalog = load_catalog()
    Store(tmp_path / "node.duckdb", catalog).close()
    leftover = compact_path(tmp_path / "node.duckdb")
    leftover.write_bytes(b"raw rows half copied")
    store = Store(tmp_path / "node.duckdb", catalog)
    try:
        assert not leftover.exists()
        assert store.row_count() == 0
    finally:
        store.close()
