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

from node.schema import attribute_column, session_state
from protocol.catalog import ATTRIBUTE_DIMENSION_PREFIX, Catalog, MetricSpec, Unit

EVENT_DIMENSIONS: dict[str, tuple[str, ...]] = {
    # Grouping on plain columns and integers, then labelling the few result rows
    # in Python, is several times faster than building label strings per event.
    "app": ("app",),
    "app_action": ("app", "action"),
    "country": ("country",),
    "hour": ("(hour % 86400) // 3600",),
}


def _label(dim: str, parts: Sequence[object]) -> str:
    """The domain label of one dimension from the raw column values SQL grouped on."""
    if dim == "app_action":
        return f"{parts[0]}/{parts[1]}"
    if dim == "hour":
        return f"{int(parts[0]):02d}"  # type: ignore[call-overload]
    return str(parts[0])


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class MetricQuery:
    """The SQL of one metric: rows of (raw grouping values..., count), `widths` values per dimension."""

    metric: MetricSpec
    sql: str
    widths: tuple[int, ...]


def _bounded_tail(cells: str, columns: int, k: int, order: str, *, already_bounded: bool = False) -> str:
    labels = ", ".join(f"d{i}" for i in range(columns))
    if already_bounded:  # the cells hold at most k rows per session already
        return f"WITH cells AS ({cells}) SELECT {labels}, sum(v) FROM cells GROUP BY ALL"
    return f"""
        WITH cells AS ({cells}),
        kept AS (
            SELECT {labels}, v FROM cells
            QUALIFY row_number() OVER (PARTITION BY session ORDER BY {order}, {labels}) <= {k}
        )
        SELECT {labels}, sum(v) FROM kept GROUP BY ALL
    """


def _last_values_column(metric: MetricSpec) -> str:
    return f'"m_{metric.name.replace("-", "_")}"'


def _is_last_value_metric(metric: MetricSpec) -> bool:
    """Attribute histograms with one value per session: computed together in one pass."""
    return (
        metric.max_cells == 1
        and metric.unit is Unit.SESSIONS
        and all(d.startswith(ATTRIBUTE_DIMENSION_PREFIX) for d in metric.dimensions)
    )


def _attribute_columns(metric: MetricSpec) -> list[str]:
    return [attribute_column(d.removeprefix(ATTRIBUTE_DIMENSION_PREFIX)) for d in metric.dimensions]


def _duration_label(expr: str, catalog: Catalog) -> str:
    edges = catalog.session.duration_edges_minutes
    labels = catalog.domain("duration")
    cases = " ".join(
        f"WHEN {expr} >= {edge!r} THEN {_quote(label)}"
        for edge, label in reversed(list(zip(edges, labels, strict=False)))
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
        # Each (session, app) yields [], ['started'] or ['started', 'completed']. A tool's
        # stages are kept or cut together (a completion never counts without its start):
        # the first k // 2 tools a session started, by first use. The cut depends on order
        # only, never on whether a tool was completed, so it biases no completion rate.
        cells = f"""
            SELECT session, app AS d0, unnest(stages) AS d1, 1 AS v FROM (
                SELECT session, app, stages,
                       row_number() OVER (PARTITION BY session ORDER BY first_seq, app) AS tool_rank
                FROM (
                    SELECT session, app, min(first_seq) AS first_seq,
                           CASE WHEN NOT bool_or(action = (CASE app {start or "WHEN NULL THEN NULL"} END)) THEN []
                                WHEN bool_or(action = (CASE app {done or "WHEN NULL THEN NULL"} END))
                                THEN ['started', 'completed'] ELSE ['started'] END AS stages
                    FROM session_actions GROUP BY session, app
                ) WHERE len(stages) > 0
            ) WHERE tool_rank <= {k // 2}
        """
        return MetricQuery(metric, _bounded_tail(cells, 2, k, "", already_bounded=True), (1, 1))
    if dims == ("app_pair",):
        # Order of first use: first minute, then arrival; each ordered pair once per session.
        cells = """
            SELECT a.session, a.app || '>' || b.app AS d0, 1 AS v,
                   b.first_minute AS ord, b.first_seq AS ord2
            FROM window_sessions a JOIN window_sessions b
              ON a.session = b.session AND (a.first_minute, a.first_seq) < (b.first_minute, b.first_seq)
        """
        return MetricQuery(metric, _bounded_tail(cells, 1, k, "ord, ord2"), (1,))
    if dims == ("tool_count",):
        top = len(catalog.apps)
        cells = f"""
            SELECT session, CAST(least(count(DISTINCT app), {top}) AS VARCHAR) AS d0, 1 AS v
            FROM session_actions GROUP BY session
        """
        return MetricQuery(metric, _bounded_tail(cells, 1, k, "", already_bounded=True), (1,))
    if dims == ("duration",):
        minutes = "(max(last_minute) - min(first_minute))"
        cells = f"""
            SELECT session, {_duration_label(minutes, catalog)} AS d0, 1 AS v
            FROM window_sessions GROUP BY session
        """
        return MetricQuery(metric, _bounded_tail(cells, 1, k, "", already_bounded=True), (1,))
    if dims == ("app_action",):
        # session_actions ranks each session's (app, action) cells by first use once.
        value = "1" if metric.unit is Unit.SESSIONS else f"least(n, {c})"
        cells = f"SELECT session, app AS d0, action AS d1, {value} AS v FROM session_actions WHERE first_rank <= {k}"
        return MetricQuery(metric, _bounded_tail(cells, 2, k, "", already_bounded=True), (2,))
    if _is_last_value_metric(metric):
        column = _last_values_column(metric)
        if len(dims) == 1:
            picks = f"{column} AS d0"
        else:
            picks = ", ".join(f"{column}[{i + 1}] AS d{i}" for i in range(len(dims)))
        cells = f"SELECT session, {picks}, 1 AS v FROM last_values WHERE {column} IS NOT NULL"
        return MetricQuery(
            metric, _bounded_tail(cells, len(dims), k, "", already_bounded=True), (1,) * len(dims)
        )

    exprs: list[str] = []
    widths: list[int] = []
    present: list[str] = []
    is_attribute_metric = False
    for dim in dims:
        if dim.startswith(ATTRIBUTE_DIMENSION_PREFIX):
            column = attribute_column(dim.removeprefix(ATTRIBUTE_DIMENSION_PREFIX))
            exprs.append(column)
            widths.append(1)
            present.append(f"{column} IS NOT NULL")
            is_attribute_metric = True
        elif dim in EVENT_DIMENSIONS:
            exprs.extend(EVENT_DIMENSIONS[dim])
            widths.append(len(EVENT_DIMENSIONS[dim]))
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
    return MetricQuery(metric, _bounded_tail(cells, len(exprs), k, "ord"), tuple(widths))


def true_tables(
    con: duckdb.DuckDBPyConnection,
    catalog: Catalog,
    window_start: int,
    *,
    metrics: Sequence[MetricSpec] | None = None,
) -> dict[str, list[int]]:
    """The true, bounded count of every cell of every metric of one window, in domain order."""
    w, cap = int(window_start), catalog.max_events_per_session
    # The E bound: only sessions with more than E events need ranking; the
    # events past their first E (by hour, then arrival) are listed and left out.
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE excess AS
        WITH heavy AS (
            SELECT session FROM events WHERE window_start = {w} GROUP BY session HAVING count(*) > {cap}
        )
        SELECT seq FROM events SEMI JOIN heavy USING (session) WHERE window_start = {w}
        QUALIFY row_number() OVER (PARTITION BY session ORDER BY hour, seq) > {cap}
        """
    )
    has_excess = con.execute("SELECT count(*) FROM excess").fetchall()[0][0] > 0
    con.execute(
        f"""
        CREATE OR REPLACE TEMP VIEW bounded AS
        SELECT * FROM events WHERE window_start = {w}
        {"AND seq NOT IN (SELECT seq FROM excess)" if has_excess else ""}
        """
    )
    chosen = list(metrics if metrics is not None else catalog.metrics)
    # Shared per-session tables, each one pass over the window's events:
    # (session, app, action) counts, and the last value(s) of every attribute histogram.
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE session_actions AS
        SELECT *, row_number() OVER (PARTITION BY session ORDER BY first_seq, app, action) AS first_rank
        FROM (SELECT session, app, action, count(*) AS n, min(seq) AS first_seq FROM bounded GROUP BY ALL)
        """
    )
    last = [m for m in chosen if _is_last_value_metric(m)]
    def last_value(metric: MetricSpec) -> str:
        columns = _attribute_columns(metric)
        value = columns[0] if len(columns) == 1 else f"[{', '.join(columns)}]"
        present = " AND ".join(c + " IS NOT NULL" for c in columns)
        return f"arg_max({value}, seq) FILTER (WHERE {present}) AS {_last_values_column(metric)}"

    picks = ", ".join(last_value(m) for m in last)
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE last_values AS SELECT session{', ' + picks if picks else ''} "
        "FROM bounded GROUP BY session"
    )
    con.execute(f"CREATE OR REPLACE TEMP TABLE window_sessions AS {session_state(con, w)}")
    try:
        tables: dict[str, list[int]] = {}
        for metric in chosen:
            query = metric_query(catalog, metric)
            rows = con.execute(query.sql).fetchall()
            tables[metric.name] = dense(catalog, metric, rows, query.widths)
        return tables
    finally:
        con.execute("DROP VIEW IF EXISTS bounded")
        con.execute("DROP TABLE IF EXISTS excess")
        for table in ("window_sessions", "session_actions", "last_values"):
            con.execute(f"DROP TABLE IF EXISTS {table}")


def dense(
    catalog: Catalog, metric: MetricSpec, rows: Sequence[Sequence[object]], widths: Sequence[int]
) -> list[int]:
    """Rows of (grouping values..., count) -> the metric's full domain vector (row-major, zeros included)."""
    positions: list[Mapping[str, int]] = [
        {label: i for i, label in enumerate(catalog.domain(d))} for d in metric.dimensions
    ]
    shape = catalog.shape(metric)
    out = [0] * catalog.domain_size(metric)
    for row in rows:
        index = 0
        column = 0
        for dim, size, lookup, width in zip(metric.dimensions, shape, positions, widths, strict=False):
            position = lookup.get(_label(dim, row[column : column + width]))
            column += width
            if position is None:
                break  # stored under an older catalog: outside today's domain, not counted
            index = index * size + position
        else:
            out[index] += int(row[-1])  # type: ignore[call-overload]
    return out
