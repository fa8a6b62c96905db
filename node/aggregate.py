"""Aggregation: catalog-generated SQL that computes every metric of a window with contribution bounding.

Deterministic bounding, in SQL, before anything is counted (DESIGN.md,
Differential privacy):
- per session, only its first E events (by hour, then arrival) count;
- in metric j, a session adds at most c_j to one cell (`least(count, c_j)`)
  and touches at most k_j cells: its first k_j cells by first use, or for
  attribute metrics its last k_j (the values it ended with);
- session-level metrics (stage, tool pairs, tool count, duration) count each
  session once per cell by construction.
So one session moves metric j by at most k_j * c_j in L1, whatever it sent.
The output is the true (un-noised) count of every cell of every metric's
public domain, zeros included, in domain order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import duckdb

from node.store import attribute_column
from protocol.catalog import ATTRIBUTE_DIMENSION_PREFIX, Catalog, MetricSpec, Unit

EVENT_DIMENSIONS = {
    "app": "app",
    "app_action": "app || '/' || action",
    "country": "country",
    "hour": "lpad(CAST((hour % 86400) // 3600 AS VARCHAR), 2, '0')",
}


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class MetricQuery:
    """The SQL of one metric: rows of (label per dimension..., count)."""

    metric: MetricSpec
    sql: str


def _bounded_tail(cells: str, dims: int, k: int, order: str) -> str:
    labels = ", ".join(f"d{i}" for i in range(dims))
    return f"""
        WITH cells AS ({cells}),
        kept AS (
            SELECT {labels}, v FROM cells
            QUALIFY row_number() OVER (PARTITION BY session ORDER BY {order}, {labels}) <= {k}
        )
        SELECT {labels}, sum(v) FROM kept GROUP BY ALL
    """


def _duration_label(expr: str, catalog: Catalog) -> str:
    edges = catalog.session.duration_edges_minutes
    labels = catalog.domain("duration")
    cases = " ".join(
        f"WHEN {expr} >= {edge!r} THEN {_quote(label)}"
        for edge, label in reversed(list(zip(edges, labels)))
    )
    return f"CASE {cases} ELSE {_quote(labels[0])} END"


def metric_query(catalog: Catalog, metric: MetricSpec) -> MetricQuery:
    """Generate the bounded counting SQL of one metric over tables `bounded` and `window_sessions`."""
    dims = metric.dimensions
    k, c = metric.max_cells, metric.cell_cap
    if dims == ("app", "stage"):
        start = " ".join(
            f"WHEN {_quote(a)} THEN {_quote(s.start_action)}" for a, s in catalog.apps.items() if s.start_action
        )
        done = " ".join(
            f"WHEN {_quote(a)} THEN {_quote(s.complete_action)}" for a, s in catalog.apps.items() if s.complete_action
        )
        per = f"""
            SELECT session, app, min(seq) AS first_seq,
                   bool_or(action = (CASE app {start or "WHEN NULL THEN NULL"} END)) AS started,
                   bool_or(action = (CASE app {done or "WHEN NULL THEN NULL"} END)) AS completed
            FROM bounded GROUP BY session, app
        """
        cells = f"""
            SELECT session, app AS d0, 'started' AS d1, 1 AS v, first_seq AS ord FROM ({per}) WHERE started
            UNION ALL
            SELECT session, app, 'completed', 1, first_seq FROM ({per}) WHERE started AND completed
        """
        return MetricQuery(metric, _bounded_tail(cells, 2, k, "ord"))
    if dims == ("app_pair",):
        # Order of first use: first minute, then arrival; each ordered pair once per session.
        cells = """
            SELECT a.session, a.app || '>' || b.app AS d0, 1 AS v,
                   b.first_minute AS ord, b.first_seq AS ord2
            FROM window_sessions a JOIN window_sessions b
              ON a.session = b.session AND (a.first_minute, a.first_seq) < (b.first_minute, b.first_seq)
        """
        return MetricQuery(metric, _bounded_tail(cells, 1, k, "ord, ord2"))
    if dims == ("tool_count",):
        top = len(catalog.apps)
        cells = f"""
            SELECT session, CAST(least(count(DISTINCT app), {top}) AS VARCHAR) AS d0, 1 AS v, 0 AS ord
            FROM bounded GROUP BY session
        """
        return MetricQuery(metric, _bounded_tail(cells, 1, k, "ord"))
    if dims == ("duration",):
        minutes = "(max(last_minute) - min(first_minute))"
        cells = f"""
            SELECT session, {_duration_label(minutes, catalog)} AS d0, 1 AS v, 0 AS ord
            FROM window_sessions GROUP BY session
        """
        return MetricQuery(metric, _bounded_tail(cells, 1, k, "ord"))

    exprs: list[str] = []
    present: list[str] = []
    is_attribute_metric = False
    for dim in dims:
        if dim.startswith(ATTRIBUTE_DIMENSION_PREFIX):
            column = attribute_column(dim.removeprefix(ATTRIBUTE_DIMENSION_PREFIX))
            exprs.append(column)
            present.append(f"{column} IS NOT NULL")
            is_attribute_metric = True
        elif dim in EVENT_DIMENSIONS:
            exprs.append(EVENT_DIMENSIONS[dim])
        else:
            raise ValueError(f"metric {metric.name!r}: dimension {dim!r} cannot be combined")
    labels = ", ".join(f"{e} AS d{i}" for i, e in enumerate(exprs))
    where = " AND ".join(present) or "TRUE"
    # A sessions metric counts a cell once per session (c = 1 by catalog validation).
    value = "1" if metric.unit is Unit.SESSIONS else f"least(count(*), {c})"
    # Attribute metrics keep the values a session ended with; others its first cells.
    order = "-max(seq)" if is_attribute_metric else "min(seq)"
    cells = f"""
        SELECT session, {labels}, {value} AS v, {order} AS ord
        FROM bounded WHERE {where} GROUP BY ALL
    """
    return MetricQuery(metric, _bounded_tail(cells, len(dims), k, "ord"))


def true_tables(
    con: duckdb.DuckDBPyConnection,
    catalog: Catalog,
    window_start: int,
    *,
    metrics: Sequence[MetricSpec] | None = None,
) -> dict[str, list[int]]:
    """The true, bounded count of every cell of every metric of one window, in domain order."""
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE bounded AS
        SELECT * FROM events WHERE window_start = {int(window_start)}
        QUALIFY row_number() OVER (PARTITION BY session ORDER BY hour, seq) <= {catalog.max_events_per_session}
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE window_sessions AS
        SELECT session, app, first_seq, first_minute, last_minute FROM session_apps
        WHERE window_start = {int(window_start)}
        """
    )
    try:
        tables: dict[str, list[int]] = {}
        for metric in metrics if metrics is not None else catalog.metrics:
            rows = con.execute(metric_query(catalog, metric).sql).fetchall()
            tables[metric.name] = dense(catalog, metric, rows)
        return tables
    finally:
        con.execute("DROP TABLE IF EXISTS bounded")
        con.execute("DROP TABLE IF EXISTS window_sessions")


def dense(catalog: Catalog, metric: MetricSpec, rows: Sequence[Sequence[object]]) -> list[int]:
    """Rows of (labels..., count) -> the metric's full domain vector (row-major, zeros included)."""
    positions: list[Mapping[str, int]] = [
        {label: i for i, label in enumerate(catalog.domain(d))} for d in metric.dimensions
    ]
    shape = catalog.shape(metric)
    out = [0] * catalog.domain_size(metric)
    for row in rows:
        index = 0
        for size, lookup, label in zip(shape, positions, row):
            position = lookup.get(str(label))
            if position is None:
                break  # stored under an older catalog: outside today's domain, not counted
            index = index * size + position
        else:
            out[index] += int(row[-1])  # type: ignore[call-overload]
    return out
