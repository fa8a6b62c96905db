"""The append-only Parquet archive of verified snapshot cells, partitioned by window.

    archive/window=2026-11-23/<node key id>.parquet

one file per accepted snapshot, written once (temp file, fsync, atomic link;
never overwritten). Any engine that reads Parquet with hive partitioning can
query it in place — DuckDB, Trino, Spark, ClickHouse — which is the path for
a hub that outgrows one machine (docs/scaling.md).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from protocol.snapshot import Snapshot
from protocol.wire import verify_envelope

SCHEMA = pa.schema(
    [
        ("node", pa.string()),
        ("catalog", pa.string()),
        ("window_start", pa.int64()),
        ("window_end", pa.int64()),
        ("seq", pa.int64()),
        ("digest", pa.string()),
        ("metric", pa.string()),
        ("kind", pa.string()),
        ("idx", pa.int64()),
        ("value", pa.int64()),
        ("variance", pa.float64()),
        ("epsilon", pa.float64()),
        ("nodes", pa.int64()),
    ]
)


class Archive:
    """Writes and locates archive files under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path_for(self, key_id: str, window_start: int) -> Path:
        day = datetime.fromtimestamp(window_start, UTC)
        label = day.strftime("%Y-%m-%d") if window_start % 86_400 == 0 else day.strftime("%Y-%m-%dT%H")
        return self.root / f"window={label}" / f"{key_id}.parquet"

    def reconcile(self, store: Any) -> int:
        """Write the files of accepted envelopes that have none (a crash between commit and archive)."""
        rows = store.cursor().execute("SELECT key_id, window_start FROM envelopes").fetchall()
        written = 0
        for key_id, window_start in rows:
            if self.path_for(key_id, int(window_start)).exists():
                continue
            envelope, digest = store.cursor().execute(
                "SELECT envelope, digest FROM envelopes WHERE key_id = ? AND window_start = ?", [key_id, window_start]
            ).fetchall()[0]
            self.write(verify_envelope(bytes(envelope)).snapshot, str(digest))
            written += 1
        return written

    def write(self, snapshot: Snapshot, digest: str) -> Path:
        """Archive one verified snapshot; a file already there is left as it is (append-only)."""
        path = self.path_for(snapshot.node, snapshot.window_start)
        if path.exists():
            return path
        columns: dict[str, list[object]] = {f.name: [] for f in SCHEMA}
        for metric, cells in snapshot.metrics.items():
            for kind, indices, values in (("cell", cells.idx, cells.val), ("other", cells.other_idx, cells.other_val)):
                n = len(indices)
                columns["metric"] += [metric] * n
                columns["kind"] += [kind] * n
                columns["idx"] += list(indices)
                columns["value"] += list(values)
                columns["variance"] += [cells.variance] * n
                columns["epsilon"] += [cells.epsilon] * n
        rows = len(columns["idx"])
        for name, value in (
            ("node", snapshot.node), ("catalog", snapshot.catalog), ("window_start", snapshot.window_start),
            ("window_end", snapshot.window_end), ("seq", snapshot.seq), ("digest", digest), ("nodes", snapshot.nodes),
        ):
            columns[name] = [value] * rows
        table = pa.table(columns, schema=SCHEMA)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # atomic, and never replaces an existing file
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        return path
