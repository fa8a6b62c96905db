"""The store's dimension columns are ENUMs of the catalog's domains, widened (never narrowed) as the catalog changes."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb

from node.dimensions import dimension_domains, enum_values, fit_dimensions
from node.privacy import FilteredEvent
from node.schema import MIGRATIONS
from node.store import Store
from protocol.catalog import Catalog, load_catalog, parse_catalog
from runtime.storage import Database

WINDOW = datetime(2026, 11, 23, tzinfo=UTC)
W = int(WINDOW.timestamp())


def column_enum(store: Store, column: str) -> list[str] | None:
    """The values of a column's ENUM, or None if it is not an ENUM."""
    con = store.cursor()
    (kind,) = con.execute(
        "SELECT data_type FROM duckdb_columns() WHERE table_name = 'events' AND column_name = ?", [column]
    ).fetchall()[0]
    if not kind.startswith("ENUM("):
        return None
    return enum_values(con, column)


def catalog_without_industry(value: str) -> Catalog:
    """The default catalog with one industry fewer."""
    data: dict[str, Any] = tomllib.loads(resources.files("protocol").joinpath("data/default_catalog.toml").read_text())
    values = data["attributes"]["industry"]["values"]
    data["attributes"]["industry"]["values"] = [v for v in values if v != value]
    return parse_catalog(data)


def test_every_dimension_column_is_a_sorted_enum_of_its_domain(tmp_path: Path) -> None:
    catalog = load_catalog()
    store = Store(tmp_path / "node.duckdb", catalog)
    try:
        domains = dimension_domains(catalog)
        assert {"app", "action", "country", "a_industry"} <= set(domains)
        for column, domain in domains.items():
            assert column_enum(store, column) == sorted(set(domain)), column
        events = [
            FilteredEvent(WINDOW, WINDOW, 1, i, "runway-calculator", "start", country, {"industry": industry})
            for i, (country, industry) in enumerate([("ZZ", "tech"), ("BR", "finance"), ("DE", None)])
        ]
        store.commit_events(events)
        con = store.cursor()
        # An ENUM orders as its strings did, and reads back as strings.
        assert con.execute("SELECT country FROM events ORDER BY country").fetchall() == [("BR",), ("DE",), ("ZZ",)]
        assert con.execute("SELECT a_industry FROM events ORDER BY seq").fetchall() == [("tech",), ("finance",), (None,)]
        assert con.execute("SELECT count(*) FROM events WHERE country = 'XX'").fetchall() == [(0,)]
    finally:
        store.close()


def test_a_store_with_string_columns_converts_and_keeps_every_value(tmp_path: Path) -> None:
    path = tmp_path / "node.duckdb"
    old = Database(duckdb.connect(str(path)), MIGRATIONS, memory_limit="256MB")  # a store from before ENUMs
    con = old.cursor()
    con.execute("ALTER TABLE events ADD COLUMN a_industry VARCHAR")
    # A value today's catalog no longer has must survive the conversion.
    con.execute(f"INSERT INTO events VALUES (1, {W}, {W}, 7, 'retired-tool', 'start', 'DE', 'mining')")
    con.execute(f"INSERT INTO events VALUES (2, {W}, {W}, 8, 'runway-calculator', 'start', 'FR', NULL)")
    old.close()
    store = Store(path, load_catalog())
    try:
        rows = store.cursor().execute("SELECT seq, app, country, a_industry FROM events ORDER BY seq").fetchall()
        assert rows == [(1, "retired-tool", "DE", "mining"), (2, "runway-calculator", "FR", None)]
        apps = column_enum(store, "app")
        assert apps is not None and "retired-tool" in apps and set(load_catalog().app_names) <= set(apps)
        industries = column_enum(store, "a_industry")
        assert industries is not None and "mining" in industries
        assert column_enum(store, "a_salary") is not None  # a column the old store lacked, added as an ENUM
    finally:
        store.close()


def test_rows_staged_under_an_older_catalog_move_after_their_column_widens(tmp_path: Path) -> None:
    path = tmp_path / "node.duckdb"
    store = Store(path, load_catalog())
    # The node version before ENUMs: string columns, here with no stored row holding the value below.
    for column in dimension_domains(load_catalog()):
        store.cursor().execute(f'ALTER TABLE events ALTER COLUMN "{column}" TYPE VARCHAR')
    event = FilteredEvent(WINDOW, WINDOW, 4, 99, "runway-calculator", "start", "DE", {"industry": "retail"})
    store.stage_rows([store.layout.table([store.layout.block([event])])])
    for stage in store.staging._stages:  # killed with the row staged
        stage.close()
    Database.close(store)
    # It restarts upgraded, with a catalog that dropped the staged value: the new ENUM has to take it.
    narrower = catalog_without_industry("retail")
    reopened = Store(path, narrower)
    try:
        assert reopened.cursor().execute("SELECT session, a_industry FROM events").fetchall() == [(99, "retail")]
        industries = column_enum(reopened, "a_industry")
        assert industries is not None and "retail" in industries
        assert reopened.staged_rows == 0
    finally:
        reopened.close()
    # Open again: every column already fits, nothing is altered.
    again = Store(path, narrower)
    try:
        assert fit_dimensions(again.cursor(), dimension_domains(narrower)) == []
    finally:
        again.close()
