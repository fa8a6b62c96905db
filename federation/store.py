"""The hub's DuckDB store: node registry, verified envelopes, merged cells, incidents, transparency log.

Tables:
    nodes        enrolled keys: key id, name, public key, enrolled/revoked times, kind (node or hub)
    envelopes    every accepted snapshot envelope, exactly as received, one per (node, window)
    merged       per (catalog, window, metric, kind, index): the sum over nodes of the noisy
                 values, of their noise variances, and how many nodes contributed
    windows      per (catalog, window): how many node snapshots were merged
    incidents    equivocations: a node offering different bytes for a window it already sent
    translog     the append-only, hash-chained public log of accepted snapshots
    hub_exports  merged windows signed by the hub, committed once (hub of hubs)
All writes go through `transaction()`, one at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import duckdb

from protocol.files import make_private_dir, make_private_files
from runtime.storage import Database

Migration = Callable[[duckdb.DuckDBPyConnection], None]


def _v1(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        """
        CREATE TABLE nodes (
            key_id VARCHAR PRIMARY KEY,
            name VARCHAR NOT NULL UNIQUE,
            public_key BLOB NOT NULL,
            enrolled BIGINT NOT NULL,
            revoked BIGINT,
            kind VARCHAR NOT NULL DEFAULT 'node'
        )
        """
    )
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


MIGRATIONS: tuple[Migration, ...] = (_v1,)
"""Schema migrations in order; the schema version is their count."""


class HubStore(Database):
    """Owns the hub's DuckDB file."""

    def __init__(self, path: Path, *, memory_limit: str = "640MB") -> None:
        self.path = path
        make_private_dir(path.parent)
        # DuckDB's default spill directory, made here 0700 (DuckDB would use the umask's mode).
        spill = path.with_name(path.name + ".tmp")
        make_private_dir(spill)
        con = duckdb.connect(str(path), config={"temp_directory": str(spill)})
        super().__init__(con, MIGRATIONS, memory_limit=memory_limit)
        # DuckDB made the file and its WAL with the umask's mode (a WAL made again after a
        # checkpoint too: the services run under umask 077).
        make_private_files(path, path.with_name(path.name + ".wal"))

    def envelope(self, key_id: str, window_start: int) -> bytes | None:
        """The envelope a key published for a window, exactly as accepted, if this hub holds one."""
        rows = self.cursor().execute(
            "SELECT envelope FROM envelopes WHERE key_id = ? AND window_start = ?", [key_id, window_start]
        ).fetchall()
        return bytes(rows[0][0]) if rows else None
