"""What a group commit and a drain cost: `python -m bench.probe_stage [ROWS] [ROUNDS] [DRAIN_ROWS]`.

Not part of `make bench` (a diagnostic behind node/stagelog.py). In this
process, with the node's store and real filtered rows: commits of ROWS rows
(300 by default) until DRAIN_ROWS are staged (the writer's, 131,072), then
one drain, ROUNDS times (6), each commit both ways:
  duckdb      an `INSERT ... BY NAME` from the Arrow table into a table of an
              attached DuckDB file, as the stages were before stage files;
  stage file  `Store.stage_rows`: one checksummed record, pwrite + fdatasync.
It prints the CPU (process time) and wall time per commit, and each drain's.
"""

from __future__ import annotations

import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa

from bench.load import make_events
from node.privacy import FilteredEvent, PrivacyFilter
from node.store import Store
from node.writer import DRAIN_ROWS
from protocol.catalog import load_catalog
from protocol.events import EVENTS_ADAPTER


def _filtered(count: int) -> list[FilteredEvent]:
    catalog = load_catalog()
    privacy = PrivacyFilter(catalog, clock_skew=timedelta(minutes=10))
    now, salt = datetime.now(UTC), secrets.token_bytes(32)
    raw = make_events(count, tag="probe")
    events = [e for i in range(0, count, 1_000) for e in EVENTS_ADAPTER.validate_python(raw[i:i + 1_000])]  # a batch's limit
    results = (privacy.apply(e, now=now, salt_for=lambda _w: salt).event for e in events)
    return [r for r in results if r is not None]


def _timed(step: Callable[..., object], *args: object) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    step(*args)
    return time.process_time() - cpu, time.perf_counter() - wall


def main(rows: int = 300, rounds: int = 6, drain_rows: int = DRAIN_ROWS) -> None:
    filtered = _filtered(5_000)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "node.duckdb", load_catalog())
        tables = [store.layout.table([store.layout.block(filtered[i:i + rows])]) for i in range(0, len(filtered) - rows, rows)]
        duck = store.cursor()
        duck.execute(f"ATTACH '{Path(tmp) / 'stage.duckdb'}' AS probe_stage")
        columns = ", ".join(f"{f.name} {'BIGINT' if pa.types.is_integer(f.type) else 'VARCHAR'}" for f in store.layout.schema)
        duck.execute(f"CREATE TABLE probe_stage.staged (seq BIGINT, {columns})")

        def duckdb_commit(table: pa.Table) -> None:
            duck.register("incoming_rows", table.append_column("seq", pa.array(range(table.num_rows), pa.int64())))
            duck.execute("INSERT INTO probe_stage.staged BY NAME SELECT * FROM incoming_rows")
            duck.unregister("incoming_rows")

        try:
            for round_ in range(1, rounds + 1):
                per: dict[str, list[tuple[float, float]]] = {"duckdb": [], "stage file": []}
                n = 0
                while store.staged_rows < drain_rows:
                    table = tables[n % len(tables)]
                    per["duckdb"].append(_timed(duckdb_commit, table))
                    per["stage file"].append(_timed(store.stage_rows, [table]))
                    n += 1
                duck.execute("DELETE FROM probe_stage.staged")
                drain_cpu, drain_wall = _timed(store.drain)
                parts = "; ".join(
                    f"{name} {sum(c for c, _ in t) / len(t) * 1000:.2f} ms CPU, "
                    f"{sum(w for _, w in t) / len(t) * 1000:.2f} ms wall"
                    for name, t in per.items()
                )
                print(f"round {round_}: {n} commits of {rows} rows: {parts} per commit; "
                      f"drain of {n * rows:,} rows {drain_cpu * 1000:.0f} ms CPU, {drain_wall * 1000:.0f} ms wall")
        finally:
            duck.close()
            store.close()


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:4]))
