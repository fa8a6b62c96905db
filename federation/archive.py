"""The append-only Parquet archive of verified snapshot cells, partitioned by window.

    archive/window=2026-11-23/log-000000000101-000000000116.parquet

one file per window per intake commit, named by the first and last
transparency-log sequence number of that commit; it holds the cells of every
snapshot of that window the commit accepted (a `log_seq` column says which
entry each row belongs to). Files are written once (temp file, fsync, atomic
link) and never rewritten. Any engine that reads Parquet with hive
partitioning can query it in place — DuckDB, Trino, Spark, ClickHouse — which
is the path for a hub that outgrows one machine (docs/scaling.md).

One file per commit rather than per snapshot: a Parquet file and its fsync
cost about 2 ms, which was the largest share of intake's time.
"""

from __future__ import annotations

import bisect
import logging
import os
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from protocol.catalog import Catalog
from protocol.envelope import verify_envelope
from protocol.files import PRIVATE_FILE_MODE, make_private_dir
from protocol.snapshot import Snapshot
from views.merge import snapshot_rows

SCHEMA = pa.schema(
    [
        ("node", pa.string()),
        ("catalog", pa.string()),
        ("window_start", pa.int64()),
        ("window_end", pa.int64()),
        ("seq", pa.int64()),
        ("digest", pa.string()),
        ("log_seq", pa.int64()),
        ("metric", pa.string()),
        ("kind", pa.string()),
        ("idx", pa.int64()),
        ("value", pa.int64()),
        ("variance", pa.float64()),
        ("epsilon", pa.float64()),
        ("nodes", pa.int64()),
    ]
)

log = logging.getLogger("liberation.hub.archive")

_FILE = re.compile(r"^log-(\d{12})-(\d{12})\.parquet$")


@dataclass(frozen=True)
class Accepted:
    """One accepted snapshot as the archive takes it: its cells as merge rows, and its log entry."""

    snapshot: Snapshot
    digest: str
    log_seq: int
    rows: pa.Table  # merge.snapshot_rows(snapshot, catalog)


class Archive:
    """Writes and locates archive files under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        make_private_dir(root)

    def window_dir(self, window_start: int) -> Path:
        day = datetime.fromtimestamp(window_start, UTC)
        label = day.strftime("%Y-%m-%d") if window_start % 86_400 == 0 else day.strftime("%Y-%m-%dT%H")
        return self.root / f"window={label}"

    def write(self, accepted: Sequence[Accepted]) -> list[Path]:
        """Archive the snapshots one commit accepted: one file per window, named by their log sequence numbers."""
        by_window: dict[int, list[Accepted]] = defaultdict(list)
        for item in accepted:
            by_window[item.snapshot.window_start].append(item)
        return [self._write_file(items) for _, items in sorted(by_window.items())]

    def _write_file(self, items: Sequence[Accepted]) -> Path:
        seqs = [item.log_seq for item in items]
        path = self.window_dir(items[0].snapshot.window_start) / f"log-{min(seqs):012d}-{max(seqs):012d}.parquet"
        if path.exists():
            return path
        table = _archive_rows(items)
        make_private_dir(path.parent)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        # Created 0600 by us, not by Arrow with the umask's mode, before a byte is written.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), PRIVATE_FILE_MODE)
        os.fchmod(fd, PRIVATE_FILE_MODE)
        with open(fd, "wb") as fh:
            # Without the Arrow schema, readers take the Parquet types: the dictionary columns read as strings.
            pq.write_table(table, fh, compression="zstd", store_schema=False)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # atomic, and never replaces an existing file
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def covered(self) -> dict[int, list[tuple[int, int]]]:
        """Per window directory name's start, the log sequence ranges its files hold."""
        ranges: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for directory in self.root.glob("window=*"):
            label = directory.name.removeprefix("window=")
            try:
                start = datetime.fromisoformat(label if len(label) == 10 else label + ":00").replace(tzinfo=UTC)
            except ValueError:
                continue
            for file in directory.iterdir():
                match = _FILE.match(file.name)
                if match:
                    ranges[int(start.timestamp())].append((int(match[1]), int(match[2])))
        return ranges

    def reconcile(self, store: Any, catalogs: Mapping[str, Catalog]) -> int:
        """Write the files of accepted snapshots that have none (a crash between commit and archive).

        A log entry of window W is archived iff a file of W's directory has a range that holds
        its sequence number: a commit's file holds every entry of W in its range, and a file
        written here holds every missing entry it names (the others in its range are elsewhere).
        """
        covered = {window: _union(ranges) for window, ranges in self.covered().items()}
        entries = store.cursor().execute(
            "SELECT seq, key_id, window_start FROM translog ORDER BY seq"
        ).fetchall()
        missing = [
            (int(seq), str(key_id), int(window))
            for seq, key_id, window in entries
            if not _holds(covered.get(int(window), ([], [])), int(seq))
        ]
        accepted = []
        for seq, key_id, window in missing:
            envelope, digest = store.cursor().execute(
                "SELECT envelope, digest FROM envelopes WHERE key_id = ? AND window_start = ?", [key_id, window]
            ).fetchall()[0]
            snapshot = verify_envelope(bytes(envelope)).snapshot
            if snapshot.catalog not in catalogs:
                log.warning("not archived: catalog no longer configured", extra={"node": key_id, "window_start": window})
                continue
            accepted.append(Accepted(snapshot, str(digest), seq, snapshot_rows(snapshot, catalogs[snapshot.catalog])))
        self.write(accepted)
        return len(accepted)


def _union(ranges: Sequence[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Sorted, disjoint ranges covering the same numbers, as (starts, ends)."""
    starts: list[int] = []
    ends: list[int] = []
    for lo, hi in sorted(ranges):
        if ends and lo <= ends[-1] + 1:
            ends[-1] = max(ends[-1], hi)
        else:
            starts.append(lo)
            ends.append(hi)
    return starts, ends


def _holds(union: tuple[list[int], list[int]], seq: int) -> bool:
    starts, ends = union
    i = bisect.bisect_right(starts, seq) - 1
    return i >= 0 and seq <= ends[i]


def _archive_rows(items: Sequence[Accepted]) -> pa.Table:
    """The archive's columns for snapshots of one window: their merge rows, and where each row comes from.

    One table for the whole commit, the per-snapshot columns repeated by numpy: building a
    table per snapshot cost more than writing the file. Its string columns that are constant
    within a snapshot are dictionary arrays (a code per row, no string per row), which the
    Parquet writer dictionary-encodes without hashing; the file holds plain strings either
    way (`SCHEMA`, as `Archive._write_file` writes it).
    """
    rows = pa.concat_tables([item.rows for item in items])
    counts = np.array([item.rows.num_rows for item in items], dtype=np.int64)

    def integers(values: list[int]) -> pa.Array:
        return pa.array(np.repeat(np.array(values, dtype=np.int64), counts))

    def strings(values: list[str]) -> pa.Array:
        distinct = {value: code for code, value in enumerate(dict.fromkeys(values))}
        codes = np.repeat(np.array([distinct[value] for value in values], dtype=np.int32), counts)
        return pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(list(distinct), pa.string()))

    snapshots = [item.snapshot for item in items]
    return pa.table(
        {
            "node": strings([s.node for s in snapshots]),
            "catalog": strings([s.catalog for s in snapshots]),
            "window_start": rows["window_start"],
            "window_end": integers([s.window_end for s in snapshots]),
            "seq": integers([s.seq for s in snapshots]),
            "digest": strings([item.digest for item in items]),
            "log_seq": integers([item.log_seq for item in items]),
            "metric": rows["metric"],
            "kind": rows["kind"],
            "idx": rows["idx"],
            "value": rows["value"],
            "variance": rows["variance"],
            "epsilon": rows["epsilon"],
            "nodes": rows["nodes"],
        }
    )
