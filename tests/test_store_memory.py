"""The node's DuckDB memory stays flat under ingest: cached table blocks are dropped between exports."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from node.privacy import FilteredEvent
from node.store import Store
from protocol.catalog import load_catalog

WINDOW = datetime(2026, 11, 23, tzinfo=UTC)
APPS = (("runway-calculator", "start"), ("real-wage-calculator", "reveal"), ("cognitive-debt-assessment", "answer"))


def test_trim_cache_drops_cached_blocks_and_keeps_every_row(tmp_path: Path) -> None:
    store = Store(tmp_path / "node.duckdb", load_catalog())
    try:
        # Drains of more than a row group, as the node's are (smaller ones wait in the WAL,
        # their blocks pinned, until a checkpoint).
        for batch in range(15):
            store.commit_events(
                [
                    FilteredEvent(
                        WINDOW, WINDOW.replace(hour=batch % 24), batch, (batch * 20_000 + i) % 7_000, *APPS[i % 3], "DE", {}
                    )
                    for i in range(20_000)
                ]
            )
        limit = store.cursor().execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
        cached = dict(store.cursor().execute("SELECT tag, memory_usage_bytes FROM duckdb_memory()").fetchall())
        assert cached.get("BASE_TABLE", 0) > 4 * 2**20, cached  # DuckDB kept blocks it wrote
        before = store.memory_bytes()
        released = store.trim_cache(keep_bytes=256 * 2**10)
        after = dict(store.cursor().execute("SELECT tag, memory_usage_bytes FROM duckdb_memory()").fetchall())
        assert released > 0 and store.memory_bytes() < before
        # What stays: `keep_bytes`, or the blocks of the row group written last (pinned), whichever is more.
        assert after.get("BASE_TABLE", 0) <= 3 * 2**19, after
        # Nothing was lost, the limit is back, and writing goes on.
        assert store.row_count() == 300_000
        assert store.cursor().execute("SELECT current_setting('memory_limit')").fetchall()[0][0] == limit
        store.commit_events([FilteredEvent(WINDOW, WINDOW, 0, 1, *APPS[0], "DE", {})])
        assert store.row_count() == 300_001
        assert store.trim_cache(keep_bytes=2**30) == 0  # nothing beyond what may be kept
    finally:
        store.close()
