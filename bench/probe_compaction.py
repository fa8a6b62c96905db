"""What a rewrite of the node's store costs: `python -m bench.probe_compaction [DAYS SESSIONS EVENTS ...]`.

Not part of `make bench`. Builds a store through the node's own drains
(default: 30 days x 2,000 sessions x 10 events, and 50 days x 20,000 x 10 =
10 M rows), the last day's session state folded as an open window's is,
then drops a day's session state and deletes the oldest day's rows, as an
export pass with retention does, and times `Store.compact` (wall and CPU of
this process), the file before and after, and a reader's longest wait
meanwhile (a thread querying the store in a loop).
"""

from __future__ import annotations

import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from node.dimensions import dimension_domains
from node.store import Store
from protocol.catalog import load_catalog

DAY = 86_400
FIRST = 1_795_392_000  # 2026-11-23


def _day_rows(store: Store, day: int, sessions: int, events: int, rng: np.random.Generator) -> pa.Table:
    """One day's filtered rows in the store's layout: `events` per session, attributes as the demo's tools send them."""
    catalog, n = store.catalog, sessions * events
    domains = dimension_domains(catalog)
    window = FIRST + day * DAY
    session = np.repeat(rng.integers(-(2**63), 2**63 - 1, size=sessions, dtype=np.int64), events)
    hour = np.repeat(rng.integers(0, 24, size=sessions), events)
    apps = list(catalog.app_names)
    app = np.repeat(rng.integers(0, len(apps), size=sessions), events)
    columns: dict[str, pa.Array] = {
        "window_start": pa.array(np.full(n, window, dtype=np.int64)),
        "hour": pa.array(window + hour * 3600),
        "session": pa.array(session),
        "app": pa.array([apps[i] for i in app]),
        "action": pa.array([catalog.apps[apps[i]].actions[j % 3] for j, i in enumerate(app)]),
        "country": pa.array(rng.choice(["DE", "KE", "BR", "US", "IN", "FR"], size=n)),
        "minute": pa.array(np.minimum(hour * 60 + np.tile(np.arange(events), sessions), 1439).astype(np.int16)),
    }
    for name in catalog.attributes:
        field = "a_" + name.replace("-", "_")
        values = list(domains[field])
        picked = rng.choice(values + [None] * len(values), size=n)
        columns[field] = pa.array(picked.tolist(), pa.string())
    return pa.table(columns).select(store.layout.schema.names).cast(store.layout.schema)


def build(path: Path, days: int, sessions: int, events: int) -> Store:
    store = Store(path, load_catalog())
    rng = np.random.default_rng(1)
    for day in range(days):
        store.stage_rows([_day_rows(store, day, sessions, events, rng)])
        store.drain()
        if day < days - 1:  # exported windows keep rows, not session state
            with store.transaction() as tx:
                store.drop_session_state(tx, FIRST + day * DAY)
    store.fold_sessions()
    store.compact()  # start from a file without free blocks, as after the previous pass
    return store


def measure(days: int, sessions: int, events: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "node.duckdb"
        started = time.perf_counter()
        store = build(path, days, sessions, events)
        built = time.perf_counter() - started
        rows = store.row_count()
        with store.transaction() as tx:  # an export pass: a window's state dropped, the oldest day deleted
            store.drop_session_state(tx, FIRST + (days - 1) * DAY)
            store.delete_rows(tx, until=FIRST)
        before = path.stat().st_size
        waits: list[float] = []
        stop = threading.Event()

        def read() -> None:
            cursor = store.cursor()
            while not stop.is_set():
                asked = time.perf_counter()
                cursor.execute("SELECT count(*) FROM snapshots").fetchall()
                waits.append(time.perf_counter() - asked)
                time.sleep(0.005)

        reader = threading.Thread(target=read)
        reader.start()
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        store.compact()
        wall = time.perf_counter() - started
        after_cpu = resource.getrusage(resource.RUSAGE_SELF)
        stop.set()
        reader.join()
        after = path.stat().st_size
        store.close()
        cpu_s = after_cpu.ru_utime + after_cpu.ru_stime - cpu.ru_utime - cpu.ru_stime
        return (
            f"{days:>3} d x {sessions:>6,} sessions x {events} events = {rows:>11,} rows (built in {built:5.1f} s): "
            f"compact {wall:5.2f} s wall, {cpu_s:5.2f} s CPU; file {before / 2**20:7.1f} -> {after / 2**20:7.1f} MiB; "
            f"longest reader wait {max(waits, default=0) * 1000:6.1f} ms"
        )


def main(argv: list[str]) -> None:
    numbers = [int(a) for a in argv] or [30, 2_000, 10, 50, 20_000, 10]
    for i in range(0, len(numbers) - 2, 3):
        print(measure(*numbers[i : i + 3]), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
