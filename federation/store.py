"""The hub's DuckDB store: node registry, verified envelopes, merged cells, incidents, transparency log.

Tables:
    nodes        enrolled keys: key id, name, public key, enrolled/revoked times, kind (node or hub)
    envelopes    every accepted snapshot envelope, exactly as received, one per (node, window)
    merged       per (catalog, window, metric, kind, index): the sum over nodes of the noisy
                 values, of their noise variances, and how many nodes contributed
    windows      per (catalog, window): how many node snapshots were merged
    incidents    equivocations: a node offering different bytes for a window it already sent
    translog     the append-only, hash-chained public log of accepted snapshots and round parts
    hub_exports  merged windows signed by the hub, committed once (hub of hubs)
    keepers      enrolled share keepers' endpoints and signed sealing keys (their identity is in `nodes`)
    rounds       federation rounds: state, deadline, keepers, fixed participant set, published aggregate
    round_contributions, round_answers   the signed parts each round combines, exactly as received
All writes go through `transaction()`, one at a time.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from runtime.registry import NODES_TABLE
from runtime.storage import FileDatabase, Migration


def _v1(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(NODES_TABLE)
    con.execute(
        """
        CREATE TABLE envelopes (
            key_id VARCHAR NOT NULL,
            window_start BIGINT NOT NULL,
            window_end BIGINT NOT NULL,
            catalog VARCHAR NOT NULL,
            seq BIGINT NOT NULL,
            nodes INTEGER NOT NULL,
            digest VARCHAR NOT NULL,
            envelope BLOB NOT NULL,
            received BIGINT NOT NULL,
            PRIMARY KEY (key_id, window_start)
        )
        """
    )
    con.execute(
        """
        CREATE TABLE merged (
            catalog VARCHAR NOT NULL,
            window_start BIGINT NOT NULL,
            metric VARCHAR NOT NULL,
            kind VARCHAR NOT NULL,
            idx BIGINT NOT NULL,
            value BIGINT NOT NULL,
            variance DOUBLE NOT NULL,
            nodes INTEGER NOT NULL,
            PRIMARY KEY (catalog, window_start, metric, kind, idx)
        )
        """
    )
    con.execute(
        """
        CREATE TABLE windows (
            catalog VARCHAR NOT NULL,
            window_start BIGINT NOT NULL,
            window_end BIGINT NOT NULL,
            nodes INTEGER NOT NULL,
            PRIMARY KEY (catalog, window_start)
        )
        """
    )
    con.execute(
        """
        CREATE TABLE incidents (
            kind VARCHAR NOT NULL,
            key_id VARCHAR NOT NULL,
            window_start BIGINT NOT NULL,
            digest_kept VARCHAR NOT NULL,
            digest_offered VARCHAR NOT NULL,
            detected BIGINT NOT NULL
        )
        """
    )
    con.execute(
        """
        CREATE TABLE translog (
            seq BIGINT PRIMARY KEY,
            key_id VARCHAR NOT NULL,
            window_start BIGINT NOT NULL,
            window_end BIGINT NOT NULL,
            catalog VARCHAR NOT NULL,
            digest VARCHAR NOT NULL,
            epsilon VARCHAR NOT NULL,
            accepted BIGINT NOT NULL,
            prev_hash VARCHAR NOT NULL,
            entry_hash VARCHAR NOT NULL
        )
        """
    )
    con.execute(
        """
        CREATE TABLE hub_exports (
            catalog VARCHAR NOT NULL,
            window_start BIGINT NOT NULL,
            envelope BLOB NOT NULL,
            created BIGINT NOT NULL,
            PRIMARY KEY (catalog, window_start)
        )
        """
    )


def _v2(con: duckdb.DuckDBPyConnection) -> None:
    # Federation rounds (federation/rounds.py): keepers' endpoints and sealing keys, each round's
    # state, the contributions and keeper answers it combines; log entries of kinds beyond snapshots.
    con.execute("ALTER TABLE translog ADD COLUMN kind VARCHAR DEFAULT 'snapshot'")
    con.execute(
        """
        CREATE TABLE keepers (
            key_id VARCHAR PRIMARY KEY,
            url VARCHAR NOT NULL,
            hpke_key BLOB NOT NULL,
            hpke_signature BLOB NOT NULL
        )
        """
    )
    con.execute(
        """
        CREATE TABLE rounds (
            catalog VARCHAR NOT NULL,
            window_start BIGINT NOT NULL,
            window_end BIGINT NOT NULL,
            state VARCHAR NOT NULL,
            opened BIGINT NOT NULL,
            deadline BIGINT NOT NULL,
            keepers VARCHAR NOT NULL,
            participants VARCHAR,
            aggregate BLOB,
            published BIGINT,
            note VARCHAR,
            PRIMARY KEY (catalog, window_start, window_end)
        )
        """
    )
    con.execute(
        """
        CREATE TABLE round_contributions (
            catalog VARCHAR NOT NULL,
            window_start BIGINT NOT NULL,
            window_end BIGINT NOT NULL,
            key_id VARCHAR NOT NULL,
            digest VARCHAR NOT NULL,
            envelope BLOB NOT NULL,
            received BIGINT NOT NULL,
            PRIMARY KEY (catalog, window_start, window_end, key_id)
        )
        """
    )
    con.execute(
        """
        CREATE TABLE round_answers (
            catalog VARCHAR NOT NULL,
            window_start BIGINT NOT NULL,
            window_end BIGINT NOT NULL,
            keeper VARCHAR NOT NULL,
            digest VARCHAR NOT NULL,
            envelope BLOB NOT NULL,
            received BIGINT NOT NULL,
            PRIMARY KEY (catalog, window_start, window_end, keeper)
        )
        """
    )


MIGRATIONS: tuple[Migration, ...] = (_v1, _v2)
"""Schema migrations in order; the schema version is their count."""


class HubStore(FileDatabase):
    """Owns the hub's DuckDB file."""

    def __init__(self, path: Path, *, memory_limit: str = "640MB") -> None:
        super().__init__(path, MIGRATIONS, memory_limit=memory_limit)

    def envelope(self, key_id: str, window_start: int) -> bytes | None:
        """The envelope a key published for a window, exactly as accepted, if this hub holds one."""
        rows = self.cursor().execute(
            "SELECT envelope FROM envelopes WHERE key_id = ? AND window_start = ?", [key_id, window_start]
        ).fetchall()
        return bytes(rows[0][0]) if rows else None
