"""The record of published windows (node/published.py): a restored database never noises a published window again.

Audit F4: a copy of node.duckdb taken before an export, put back, made the
node (which exports every due window at start) publish the window a second
time with fresh noise: 2 epsilon.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import duckdb
import pytest

from federation.settings import HubSettings
from node.export import AdoptionRefused, PublishedCopyMissing
from node.importer import import_lines
from node.published import Publication, PublishedLog, PublishedLogDamaged
from node.schema import session_tables
from node.service import close_node, open_node
from protocol.envelope import sign_snapshot, verify_envelope
from protocol.keys import PublicKey, SigningKey
from tests.factories import W_DAY, ev, store_with
from tests.servers import Process, admin_token, node_settings, run_hub, run_node
from tests.test_export import CATALOG, busy_window, publisher

DAY = 86_400


def yesterday() -> datetime:
    return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)


def history(day: datetime, sessions: int = 40) -> list[str]:
    return [
        json.dumps({
            "app": "real-wage-calculator", "action": action, "attributes": {"salary": 52_000},
            "timestamp": (day + timedelta(hours=2 + s % 18, minutes=step)).isoformat(), "geo_hint": "KE",
            "session_id": f"sess_published_{s:04d}",
        })
        for s in range(sessions) for step, action in enumerate(("start", "reveal"))
    ]


def back_up(data_dir: Path, to: Path) -> None:
    """What an operator's backup of a stopped node holds of its database."""
    to.mkdir()
    for name in ("node.duckdb", "node.duckdb.wal"):
        if (data_dir / name).exists():
            shutil.copy2(data_dir / name, to / name)


def restore(backup: Path, data_dir: Path) -> None:
    """Put the database back as it was (node stopped): the record in keys/ stays as it is now."""
    for name in ("node.duckdb", "node.duckdb.wal"):
        (data_dir / name).unlink(missing_ok=True)
        if (backup / name).exists():
            shutil.copy2(backup / name, data_dir / name)


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback only
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def metric(url: str, line: str) -> float:
    _, body = get(url + "/metrics")
    return next((float(m.rsplit(" ", 1)[1]) for m in body.decode().splitlines() if m.startswith(line + " ")), 0.0)


def liberation(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "liberation", *args], capture_output=True, text=True, timeout=120)


def test_a_database_restored_from_before_an_export_never_publishes_the_window_again(tmp_path: Path) -> None:
    data_dir, day = tmp_path / "node", yesterday()
    label = day.strftime("%Y-%m-%d")
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(history(day)) + "\n")
    assert liberation("node", "import", str(source), "--data-dir", str(data_dir)).returncode == 0
    back_up(data_dir, tmp_path / "backup")  # node stopped, window not exported yet
    env = {"LIBERATION_NODE_DATA_DIR": str(data_dir), "LIBERATION_NODE_PORT": "0",
           "LIBERATION_NODE_EXPORT_GRACE_SECONDS": "0"}

    proc = Process(["node", "serve"], tmp_path / "first.log", env=env)
    try:
        deadline = time.monotonic() + 60
        while (answer := get(f"{proc.url}/v1/snapshots/{label}"))[0] != 200:
            assert time.monotonic() < deadline, "yesterday was not exported"
            time.sleep(0.1)
        first = answer[1]
    finally:
        assert proc.stop() == 0

    restore(tmp_path / "backup", data_dir)
    proc = Process(["node", "serve"], tmp_path / "second.log", env=env)
    try:
        missing = 'liberation_node_exports_refused_total{reason="published-copy-missing"}'
        deadline = time.monotonic() + 60
        while metric(proc.metrics_url, missing) < 1:
            status, body = get(f"{proc.url}/v1/snapshots/{label}")
            assert status == 404, f"published again: {'the same bytes' if body == first else 'new noise, 2 epsilon'}"
            assert time.monotonic() < deadline, "the lost copy was not reported"
            time.sleep(0.1)
        assert get(f"{proc.url}/v1/snapshots/{label}")[0] == 404
    finally:
        assert proc.stop() == 0
    assert "copy is missing from the store" in (tmp_path / "second.log").read_text()

    record = data_dir / "keys" / "published.log"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    lines = [Publication.from_line(line) for line in record.read_bytes().splitlines()]
    assert [(e.window_start, e.digest) for e in lines] == [(int(day.timestamp()), verify_envelope(first).digest)]
    con = duckdb.connect(str(data_dir / "node.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM snapshots").fetchall() == [(0,)]
        assert int(day.timestamp()) not in session_tables(con)  # treated as exported: its state is gone
    finally:
        con.close()
    assert not (data_dir / "salts" / f"{label}.salt").exists()
    budget = liberation("node", "budget", "--data-dir", str(data_dir))
    assert "epsilon 0.5000  (copy missing" in budget.stdout
    export = liberation("node", "export", "--window", label, "--data-dir", str(data_dir), "--out", str(tmp_path / "x"))
    assert export.returncode == 1 and "never noised again" in export.stderr

    # The operator's recovery with a copy at hand (here the node's own first answer).
    (tmp_path / "copy.msgpack").write_bytes(first)
    adopted = liberation("node", "adopt", str(tmp_path / "copy.msgpack"), "--data-dir", str(data_dir))
    assert adopted.returncode == 0, adopted.stderr
    con = duckdb.connect(str(data_dir / "node.duckdb"), read_only=True)
    try:
        assert bytes(con.execute("SELECT envelope FROM snapshots").fetchall()[0][0]) == first
        assert con.execute("SELECT state FROM outbox").fetchall() == [("sent",)]
        assert con.execute("SELECT sum(epsilon), count(DISTINCT digest) FROM ledger").fetchall() == [(pytest.approx(0.5), 1)]
    finally:
        con.close()


async def test_a_restored_node_adopts_the_hubs_copy_byte_identical(tmp_path: Path) -> None:
    day = yesterday()
    settings = node_settings(tmp_path / "node", export_grace_seconds=0)
    node = open_node(settings)
    try:
        import_lines(node, history(day))
        key = node.key.public
    finally:
        close_node(node)
    back_up(settings.data_dir, tmp_path / "backup")
    hub_settings = HubSettings(data_dir=tmp_path / "hub", port=0, metrics_port=0, admin_token=admin_token())  # type: ignore[arg-type]
    pushing = node_settings(tmp_path / "node", export_grace_seconds=0,
                            push={"hub_url": None, "interval_seconds": 0.2, "min_backoff_seconds": 0.1})
    async with run_hub(hub_settings) as hub, aiohttp.ClientSession() as http:
        hub.hub.registry.enroll("restored", PublicKey.from_b64(key.b64))
        pushing = pushing.model_copy(update={"push": pushing.push.model_copy(update={"hub_url": hub.url})})
        copy_url = f"{hub.url}/v1/snapshots/{key.key_id}/{int(day.timestamp())}"

        async def fetch(url: str) -> tuple[int, bytes]:
            async with http.get(url) as resp:
                return resp.status, await resp.read()

        def held() -> list[tuple[bytes]]:
            return hub.hub.store.cursor().execute(  # type: ignore[no-any-return]
                "SELECT envelope FROM envelopes WHERE key_id = ?", [key.key_id]).fetchall()

        async with run_node(pushing):
            deadline = time.monotonic() + 60
            while not held():
                assert time.monotonic() < deadline, "the hub did not get yesterday's snapshot"
                await asyncio.sleep(0.1)
            first = bytes(held()[0][0])

        restore(tmp_path / "backup", settings.data_dir)
        async with run_node(pushing) as running:
            deadline = time.monotonic() + 60
            while (answer := await fetch(f"{running.url}/v1/snapshots/{day:%Y-%m-%d}"))[0] != 200:
                assert time.monotonic() < deadline, "the node did not adopt the hub's copy"
                await asyncio.sleep(0.1)
            assert answer[1] == first, "published again with new noise instead of adopting the hub's copy"
            node = running.node
            assert [e.state for e in node.outbox.entries()] == ["sent"]  # the hub has it: never pushed again
            ledger = node.publisher.ledger()
            assert {e.digest for e in ledger} == {verify_envelope(first).digest}
            assert sum(e.epsilon for e in ledger) == pytest.approx(0.5)
            assert node.metrics.snapshots_adopted._value.get() == 1
            assert node.metrics.exports_refused.labels("published-copy-missing")._value.get() == 0
        assert hub.hub.store.cursor().execute("SELECT count(*) FROM incidents").fetchall() == [(0,)]
        assert await fetch(copy_url) == (200, first)
    record = (settings.data_dir / "keys" / "published.log").read_bytes().splitlines()
    assert len(record) == 1


def test_a_crash_between_the_record_and_the_commit_never_noises_the_window_again(tmp_path: Path) -> None:
    """The line is synced before the commit; killed in between, the node has a line and no snapshot."""
    day = yesterday()
    settings = node_settings(tmp_path / "node", export_grace_seconds=0)
    node = open_node(settings)
    try:
        import_lines(node, history(day))
    finally:
        close_node(node)
    child = f"""
import os, signal
from pathlib import Path
from node.service import open_node
from node.published import PublishedLog
from tests.servers import node_settings

append = PublishedLog.append
def append_then_die(self, entries):
    append(self, entries)
    if entries:
        os.kill(os.getpid(), signal.SIGKILL)  # after the line is synced, before the export's COMMIT
PublishedLog.append = append_then_die
open_node(node_settings(Path({str(settings.data_dir)!r}), export_grace_seconds=0)).export_due()
"""
    result = subprocess.run([sys.executable, "-c", child], cwd=Path(__file__).parent.parent, timeout=120)
    assert result.returncode == -9
    node = open_node(settings)
    try:
        window = int(day.timestamp())
        assert node.publisher.record.get(window) is not None and node.publisher.stored(window) is None
        assert node.export_due() == []
        assert node.publisher.stored(window) is None
        assert node.metrics.exports_refused.labels("published-copy-missing")._value.get() == 1
        assert window not in session_tables(node.store.cursor())
        with pytest.raises(PublishedCopyMissing):
            node.publisher.export(window)
    finally:
        close_node(node)


def test_lost_copies_keep_their_numbers_budget_and_are_adopted_only_as_recorded(tmp_path: Path) -> None:
    store = store_with(tmp_path, busy_window() + [ev("next", "runway-calculator", "start", 1440 + 5)])
    pub = publisher(store, tmp_path, clock=lambda: datetime.fromtimestamp(W_DAY + 3 * DAY, UTC))
    first = pub.export(W_DAY)
    # Another envelope of the window under the node's key (as new noise would be): never the recorded one.
    other = sign_snapshot(verify_envelope(first).snapshot.model_copy(update={"created": 0}), pub.key)
    # The store loses the window (an older copy of it), the record keeps it.
    with store.transaction() as tx:
        for table in ("snapshots", "ledger", "outbox"):
            tx.execute(f"DELETE FROM {table}")
    pub = publisher(store, tmp_path, clock=lambda: datetime.fromtimestamp(W_DAY + 3 * DAY, UTC))
    assert [e.window_start for e in pub.missing()] == [W_DAY]
    assert W_DAY not in pub.windows.due()
    with pytest.raises(PublishedCopyMissing):
        pub.export(W_DAY)
    assert pub.spent(W_DAY) == pytest.approx(CATALOG.epsilon_community)  # spent, though the ledger lost it
    assert verify_envelope(pub.export(W_DAY + DAY)).snapshot.seq == 2  # after the lost one's number
    with pytest.raises(AdoptionRefused, match="not the one this node recorded"):
        pub.adopt(other)
    with pytest.raises(AdoptionRefused, match="does not verify"):
        pub.adopt(first[:-1] + bytes([first[-1] ^ 1]))
    assert pub.adopt(first) == W_DAY and pub.stored(W_DAY) == first
    assert pub.adopt(first) == W_DAY  # idempotent
    assert pub.missing() == [] and pub.spent(W_DAY) == pytest.approx(CATALOG.epsilon_community)
    assert [(e.window_start, e.state) for e in _outbox(store)] == [(W_DAY, "sent"), (W_DAY + DAY, "pending")]
    # The record lost as well (a whole data dir restored): the node's own envelope is taken, and recorded again.
    with store.transaction() as tx:
        for table in ("snapshots", "ledger", "outbox"):
            tx.execute(f"DELETE FROM {table} WHERE window_start = ?", [W_DAY])
    (tmp_path / "keys" / "published.log").unlink()
    pub = publisher(store, tmp_path, clock=lambda: datetime.fromtimestamp(W_DAY + 3 * DAY, UTC))
    assert pub.record.get(W_DAY) is None and W_DAY in pub.windows.due()
    stranger = sign_snapshot(
        verify_envelope(first).snapshot.model_copy(update={"node": SigningKey.from_seed(b"s" * 32).public.key_id}),
        SigningKey.from_seed(b"s" * 32),
    )
    with pytest.raises(AdoptionRefused, match="not signed by its key"):
        pub.adopt(stranger)
    assert pub.adopt(first) == W_DAY and pub.stored(W_DAY) == first
    assert pub.record.get(W_DAY) == Publication(W_DAY, 1, verify_envelope(first).digest, pub.key.public.key_id,
                                                pytest.approx(CATALOG.epsilon_community))  # type: ignore[arg-type]
    assert W_DAY not in pub.windows.due()


def _outbox(store: object) -> list[tuple[int, str]]:
    from node.outbox import Outbox
    from node.settings import PushSettings

    return Outbox(store, PushSettings()).entries()  # type: ignore[arg-type,return-value]


def test_the_record_is_rebuilt_from_the_store_and_survives_a_torn_line(tmp_path: Path) -> None:
    store = store_with(tmp_path, busy_window())
    pub = publisher(store, tmp_path)
    envelope = pub.export(W_DAY)
    path = tmp_path / "keys" / "published.log"
    line = path.read_bytes()
    path.unlink()  # a store from before the record, or a lost record: rebuilt from the snapshots
    rebuilt = publisher(store, tmp_path).record
    assert path.read_bytes() == line
    assert rebuilt.get(W_DAY) == Publication(W_DAY, 1, verify_envelope(envelope).digest, pub.key.public.key_id,
                                             pytest.approx(CATALOG.epsilon_community))  # type: ignore[arg-type]
    with path.open("ab") as fh:
        fh.write(line[: len(line) // 2])  # a line a crash cut short: no commit followed it
    assert [e.window_start for e in PublishedLog(path).entries()] == [W_DAY]
    assert path.read_bytes() == line
    path.write_bytes(b"{not json}\n" + line)
    with pytest.raises(PublishedLogDamaged, match="line 1 is damaged"):
        PublishedLog(path)
    os.chmod(path, 0o644)
    path.write_bytes(line)
    PublishedLog(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
