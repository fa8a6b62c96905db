"""The keeper's DuckDB store: the nodes it opens seeds for, and its ledger of answered rounds.

Tables:
    nodes     enrolled node keys (runtime/registry.py): key id, name, public key, enrolled/revoked, kind
    answers   one row per round answered: the participant set (as its digest and size), the signed
              answer exactly as first sent, and when. Never updated, never deleted: a round is
              answered once, and every later request for the same set gets these bytes.
All writes go through `transaction()`, one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

from runtime.registry import NODES_TABLE
from runtime.storage import FileDatabase


def _v1(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(NODES_TABLE)
    con.execute(
        """
        CREATE TABLE answers (
            catalog VARCHAR NOT NULL,
            window_start BIGINT NOT NULL,
            window_end BIGINT NOT NULL,
            participants VARCHAR NOT NULL,
            nodes INTEGER NOT NULL,
            digest VARCHAR NOT NULL,
            envelope BLOB NOT NULL,
            answered BIGINT NOT NULL,
            PRIMARY KEY (catalog, window_start, window_end)
        )
        """
    )


MIGRATIONS = (_v1,)


@dataclass(frozen=True)
class AnsweredRound:
    """A row of the ledger."""

    catalog: str
    window_start: int
    window_end: int
    participants: str
    """SHA-256 (hex) of the participant set: the sorted node key ids and their contribution digests."""
    nodes: int
    digest: str
    """SHA-256 (hex) of the answer's body."""
    envelope: bytes
    answered: int


class KeeperStore(FileDatabase):
    """Owns the keeper's DuckDB file."""

    def __init__(self, path: Path, *, memory_limit: str = "256MB") -> None:
        super().__init__(path, MIGRATIONS, memory_limit=memory_limit)

    def answered(self, catalog: str, window_start: int, window_end: int) -> AnsweredRound | None:
        """The ledger's row of a round, if it was answered."""
        rows = self.cursor().execute(
            "SELECT * FROM answers WHERE catalog = ? AND window_start = ? AND window_end = ?",
            [catalog, window_start, window_end],
        ).fetchall()
        return _row(rows[0]) if rows else None

    def record(self, entry: AnsweredRound) -> AnsweredRound:
        """Add a round to the ledger; if it is there already, the row that was first (the caller compares)."""
        with self.transaction() as tx:
            tx.execute(
                "INSERT INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [entry.catalog, entry.window_start, entry.window_end, entry.participants, entry.nodes,
                 entry.digest, entry.envelope, entry.answered],
            )
            rows = tx.execute(
                "SELECT * FROM answers WHERE catalog = ? AND window_start = ? AND window_end = ?",
                [entry.catalog, entry.window_start, entry.window_end],
            ).fetchall()
        return _row(rows[0])

    def ledger(self) -> list[AnsweredRound]:
        rows = self.cursor().execute("SELECT * FROM answers ORDER BY window_start, catalog").fetchall()
        return [_row(r) for r in rows]


def _row(row: tuple[object, ...]) -> AnsweredRound:
    catalog, start, end, participants, nodes, digest, envelope, answered = row
    return AnsweredRound(str(catalog), int(start), int(end), str(participants), int(nodes),  # type: ignore[call-overload]
                         str(digest), bytes(envelope), int(answered))  # type: ignore[call-overload]
