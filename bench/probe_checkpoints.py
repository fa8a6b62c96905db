"""Do DuckDB checkpoints hold commits? `python -m bench.probe_checkpoints [SECONDS]`.

Not part of `make bench` (the diagnostic behind the node's former staging
databases, since replaced by stage files: `python -m bench.probe_stage`). A
writer thread commits 500-row Arrow inserts (an events table and a session
log, as the node's rows) every 4 ms while another connection checkpoints
every 100,000 rows, in two set-ups:
  one-file   both tables in one database file, `CHECKPOINT` of that file;
  two-files  the tables in two attached files used in turn, `CHECKPOINT` of
             the file the writer has just left (what the node's stages did).
It prints the commit latency (p50, p99, slowest) and each checkpoint's time.
"""

from __future__ import annotations

import queue
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import duckdb
import pyarrow as pa

ROWS = 500
EVERY = 100_000
ATTRIBUTES = 8


def _tables(count: int) -> list[pa.Table]:
    rng = random.Random(1)
    apps = ["runway-calculator", "real-wage-calculator", "cognitive-debt-assessment"]

    def one(first: int) -> pa.Table:
        columns = {
            "seq": list(range(first, first + ROWS)),
            "window_start": [0] * ROWS,
            "hour": [0] * ROWS,
            "session": [rng.getrandbits(63) for _ in range(ROWS)],
            "app": [rng.choice(apps) for _ in range(ROWS)],
            "action": [rng.choice(["start", "calculate", "complete"]) for _ in range(ROWS)],
            "country": [rng.choice(["DE", "US", "BR", "ZZ"]) for _ in range(ROWS)],
            "minute": pa.array([5] * ROWS, pa.int16()),
        }
        for j in range(ATTRIBUTES):
            columns[f"a{j}"] = [rng.choice(["a", "b", "c", None, None]) for _ in range(ROWS)]
        return pa.table(columns)

    return [one(i * ROWS) for i in range(count)]


def run(setup: str, seconds: float, tables: list[pa.Table]) -> str:
    attributes = ", ".join(f"a{j} VARCHAR" for j in range(ATTRIBUTES))
    columns = ", ".join(
        ["seq", "window_start", "hour", "session", "app", "action", "country"] + [f"a{j}" for j in range(ATTRIBUTES)]
    )
    with tempfile.TemporaryDirectory() as tmp:
        con = duckdb.connect(str(Path(tmp) / "store.duckdb"))
        con.execute("SET checkpoint_threshold = '4GB'")  # checkpoints only when this probe asks
        prefixes = []
        for side in ("a", "b") if setup == "two-files" else ("a",):
            prefix = ""
            if setup == "two-files":
                con.execute(f"ATTACH '{Path(tmp) / side}.duckdb' AS file_{side}")
                prefix = f"file_{side}."
            con.execute(f"CREATE TABLE {prefix}events (seq BIGINT, window_start BIGINT, hour BIGINT, session BIGINT, "
                        f"app VARCHAR, action VARCHAR, country VARCHAR, {attributes})")
            con.execute(f"CREATE TABLE {prefix}session_log (session BIGINT, app VARCHAR, seq BIGINT, minute SMALLINT)")
            prefixes.append(prefix)
        latencies: list[float] = []
        checkpoints: list[float] = []
        full: queue.Queue[str | None] = queue.Queue()

        def writer() -> None:
            cursor = con.cursor()
            side, rows, n = 0, 0, 0
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                incoming = tables[n % len(tables)]  # noqa: F841 - read by name in the SQL (DuckDB replacement scan)
                n += 1
                p = prefixes[side]
                started = time.perf_counter()
                cursor.execute(f"BEGIN; INSERT INTO {p}events SELECT {columns} FROM incoming; "
                               f"INSERT INTO {p}session_log SELECT session, app, seq, minute FROM incoming; COMMIT")
                latencies.append(time.perf_counter() - started)
                rows += ROWS
                if rows >= EVERY:
                    full.put(p.rstrip(".") or "store")
                    side, rows = (side + 1) % len(prefixes), 0
                time.sleep(0.004)
            full.put(None)

        def checkpointer() -> None:
            cursor = con.cursor()
            while (name := full.get()) is not None:
                started = time.perf_counter()
                cursor.execute(f"CHECKPOINT {name}")
                checkpoints.append(time.perf_counter() - started)

        threads = [threading.Thread(target=writer), threading.Thread(target=checkpointer)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        con.close()
    ordered = sorted(latencies)
    ms = [round(c * 1000) for c in checkpoints]
    return (f"{setup:9}: {len(ordered)} commits, p50 {statistics.median(ordered) * 1000:.1f} ms, "
            f"p99 {ordered[int(len(ordered) * 0.99)] * 1000:.1f} ms, slowest {ordered[-1] * 1000:.1f} ms; "
            f"checkpoints (ms) {ms}")


def main(seconds: float = 10.0) -> None:
    tables = _tables(100)
    for setup in ("one-file", "two-files"):
        print(run(setup, seconds, tables))


if __name__ == "__main__":
    main(*(float(a) for a in sys.argv[1:2]))
