"""The transparency log's one writer: entries appended inside the caller's transaction, the head kept between them.

Snapshot intake and federation rounds both append (federation/translog.py has the format).
Every append happens inside `LogWriter.transaction()`, which holds the store's write lock, so
appends never interleave; the head (last seq, last hash) is kept in memory from one to the
next and forgotten whenever a transaction fails, so the next one reads it again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import duckdb
import pyarrow as pa

from federation.store import HubStore
from federation.translog import GENESIS, entry_hash

_COLUMNS = ("seq", "key_id", "window_start", "window_end", "catalog", "digest", "epsilon", "accepted", "prev_hash",
            "entry_hash", "kind")
_INTS = frozenset({"seq", "window_start", "window_end", "accepted"})


class LogWriter:
    """Appends hash-chained entries to the `translog` table."""

    def __init__(self, store: HubStore) -> None:
        self.store = store
        self._head: tuple[int, str] | None = None

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The store's write transaction; a failure (the commit's included) makes the head be read again."""
        try:
            with self.store.transaction() as tx:
                yield tx
        except BaseException:
            self._head = None
            raise

    def append(self, tx: duckdb.DuckDBPyConnection, entries: Sequence[Mapping[str, Any]]) -> list[int]:
        """Append entries (node, window_start, window_end, catalog, digest, epsilon, accepted, kind); their seqs.

        A `snapshot` entry hashes the fields it always had; any other kind hashes its `kind` too.
        """
        if self._head is None:
            last = tx.execute("SELECT seq, entry_hash FROM translog ORDER BY seq DESC LIMIT 1").fetchall()
            self._head = (int(last[0][0]), str(last[0][1])) if last else (0, GENESIS)
        seq, prev = self._head
        columns: dict[str, list[object]] = {name: [] for name in _COLUMNS}
        for entry in entries:
            seq += 1
            kind = str(entry.get("kind", "snapshot"))
            epsilon = dict(sorted(entry["epsilon"].items()))
            content: dict[str, Any] = {
                "seq": seq, "node": entry["node"], "window_start": entry["window_start"],
                "window_end": entry["window_end"], "catalog": entry["catalog"], "digest": entry["digest"],
                "epsilon": epsilon, "accepted": entry["accepted"],
            }
            if kind != "snapshot":
                content["kind"] = kind
            current = entry_hash(prev, content)
            for name, value in (
                ("seq", seq), ("key_id", entry["node"]), ("window_start", entry["window_start"]),
                ("window_end", entry["window_end"]), ("catalog", entry["catalog"]), ("digest", entry["digest"]),
                ("epsilon", json.dumps(epsilon, sort_keys=True)), ("accepted", entry["accepted"]), ("prev_hash", prev),
                ("entry_hash", current), ("kind", kind),
            ):
                columns[name].append(value)
            prev = current
        table = pa.table({name: pa.array(v, pa.int64() if name in _INTS else pa.string()) for name, v in columns.items()})
        tx.register("incoming_log", table)
        try:
            tx.execute(f"INSERT INTO translog ({', '.join(_COLUMNS)}) SELECT {', '.join(_COLUMNS)} FROM incoming_log")
        finally:
            tx.unregister("incoming_log")
        self._head = (seq, prev)
        return list(range(seq - len(entries) + 1, seq + 1))
