"""Insights derived from merged tables: usage, completion, tool pairs, shapes, money, maps, peaks, trends.

All post-processing of noisy published values (no privacy cost). Output is
JSON-ready, with one convention throughout:
- a number is `{"value": v, "sd": s, "nodes": n}`: `sd` is the standard
  deviation of its noise (delta method for ratios and quantiles), `nodes` how
  many node snapshots contributed (for a sum or ratio of several cells, the
  most that any one part had);
- a number the table lacks is `None`, never zero: the cell's sum did not
  stand clear of its noise (views/significance.py; its value went into
  `other`), not zero with certainty;
- a rate or share outside [0, 1] (noise) is clipped and says so: `clipped`.
  Sums run over the parts present and are None when none is; a ratio is None
  when a part is missing or its denominator is <= 0.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from protocol.catalog import ATTRIBUTE_DIMENSION_PREFIX, STAGES, Catalog, MetricSpec
from protocol.regions import REGION_NAMES, region_of
from protocol.windows import DAY
from views.columns import INT64_SAFE, Array, Cells, Layout, metric_items
from views.merge import CellSum, Kind, ReadTable, fold_sums, sd, total_sums
from views.significance import presence_threshold, presence_thresholds

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
STARTED, COMPLETED = STAGES.index("started"), STAGES.index("completed")
Num = dict[str, Any]
"""An output number: {"value": int | float, "sd": float, "nodes": int}."""


# ---- numbers -----------------------------------------------------------------


def _num(cs: CellSum | None) -> Num | None:
    return None if cs is None else {"value": cs.value, "sd": sd(cs), "nodes": cs.nodes}


def _ratio(num: CellSum | None, den: CellSum | None) -> Num | None:
    """num / den clipped to [0, 1] (then `clipped` is true), sd by the delta method.

    r * sqrt(var_n/n^2 + var_d/d^2) = sqrt(var_n + r^2 var_d) / d, which stays
    defined at n = 0. num and den are taken as independent: their noises are
    (completed sessions are also started ones, so their truths are not).
    """
    if num is None or den is None or den.value <= 0:
        return None
    r = num.value / den.value
    spread = math.sqrt(num.variance + r * r * den.variance) / den.value
    return {"value": min(1.0, max(0.0, r)), "sd": spread, "nodes": max(num.nodes, den.nodes), "clipped": not 0 <= r <= 1}


def _share(x: float, var_x: float, y: float, var_y: float, nodes: int) -> Num | None:
    """x / (x + y) for independent x and y, clipped to [0, 1] (then `clipped` is true).

    Delta method: dp/dx = y/s^2, dp/dy = -x/s^2 with s = x + y, so
    sd = sqrt(y^2 var_x + x^2 var_y) / s^2.
    """
    s = x + y
    if s <= 0:
        return None
    spread = math.sqrt(y * y * var_x + x * x * var_y) / (s * s)
    r = x / s
    return {"value": min(1.0, max(0.0, r)), "sd": spread, "nodes": nodes, "clipped": not 0 <= r <= 1}


Significant = Callable[[CellSum], bool]
"""Whether a sum stands clear of its noise (views/significance.py); growth needs both of its ends to."""


def _growth(series: Sequence[CellSum | None], significant: Significant | None = None) -> Num | None:
    """Sum of the second half over the first, minus 1 (an odd middle window belongs to neither)."""
    half = len(series) // 2
    if half == 0:
        return None
    return _growth_of(total_sums(series[:half]), total_sums(series[len(series) - half :]), significant)


def _growth_of(first: CellSum | None, second: CellSum | None, significant: Significant | None = None) -> Num | None:
    if first is None or second is None or first.value <= 0:
        return None
    if significant is not None and not (significant(first) and significant(second)):
        return None  # a trend between ends that noise could have made up is not shown
    r = second.value / first.value
    spread = math.sqrt(second.variance + r * r * first.variance) / first.value
    return {"value": r - 1, "sd": spread, "nodes": max(first.nodes, second.nodes)}


# ---- quantiles ---------------------------------------------------------------


def quantiles(
    edges: Sequence[float],
    counts: Sequence[float],
    qs: Sequence[float] = (0.25, 0.5, 0.75),
    top: float | None = None,
) -> dict[str, float | None]:
    """Quantiles of a histogram with fixed edges, keyed "p25", "p50", ...; all None if it is empty.

    Bucket i is [edges[i], edges[i+1]); the last is open and ends at `top`
    (default: one more bucket width). Negative counts are clipped to 0, the
    counts cumulated, and the quantile interpolated linearly inside its bucket.
    """
    points = _quantile_points(edges, counts, qs, top, None)
    return {_qname(q): None if p is None else p[0] for q, p in zip(qs, points, strict=False)}


def _qname(q: float) -> str:
    return f"p{q * 100:g}"


def _quantile_points(
    edges: Sequence[float],
    counts: Sequence[float],
    qs: Sequence[float],
    top: float | None,
    variances: Sequence[float] | None,
) -> list[tuple[float, float] | None]:
    """(value, delta-method sd) per q; the sd is 0 without `variances`."""
    if not edges or len(counts) != len(edges):
        raise ValueError("a histogram has one count per edge (the last bucket is open)")
    if top is None:
        top = edges[-1] + (edges[-1] - edges[-2]) if len(edges) > 1 else edges[-1]
    upper = [*edges[1:], top]
    clipped = [max(0.0, float(c)) for c in counts]
    total = math.fsum(clipped)
    if not total > 0:
        return [None for _ in qs]
    points: list[tuple[float, float] | None] = []
    for q in qs:
        if not 0 <= q <= 1:
            raise ValueError(f"quantile {q} is outside [0, 1]")
        target, below, k = q * total, 0.0, 0
        for k, c in enumerate(clipped):  # noqa: B007 - k is read after the break
            if c > 0 and below + c >= target:
                break
            below += c
        width, c_k = upper[k] - edges[k], clipped[k]
        frac = min(1.0, max(0.0, (target - below) / c_k))
        spread = 0.0
        if variances is not None:
            # value = lo + (q T - below) / c_k * width; its partial derivatives
            # in a bucket below, at, and above k (a clipped bucket: 0).
            grads = [(q - 1) * width / c_k] * k + [(q - frac) * width / c_k] + [q * width / c_k] * (len(edges) - k - 1)
            spread = math.sqrt(math.fsum(g * g * v for g, v, c in zip(grads, variances, clipped, strict=False) if c > 0))
        points.append((edges[k] + frac * width, spread))
    return points


def _quantile_nums(
    edges: Sequence[float], cells: Sequence[CellSum | None], qs: Sequence[float] = (0.25, 0.5, 0.75)
) -> dict[str, Num | None]:
    # Views pass every bucket's sum, shown or not (`raw`): presence is for display, and a
    # quantile read from the shown buckets alone would follow the bucket layout, not the data.
    # An absent bucket (no snapshot in range) counts as 0.
    counts = [0 if c is None else c.value for c in cells]
    variances = [0.0 if c is None else c.variance for c in cells]
    nodes = max((c.nodes for c in cells if c is not None), default=0)
    points = _quantile_points(edges, counts, qs, None, variances)
    return {
        _qname(q): None if p is None else {"value": p[0], "sd": p[1], "nodes": nodes} for q, p in zip(qs, points, strict=False)
    }


# ---- insights ----------------------------------------------------------------


def usage(catalog: Catalog, table: ReadTable) -> dict[str, Any]:
    """Events and sessions per tool and action, and per tool.

    {"apps": {app: {"title", "actions": {action: {"events": Num, "sessions": Num}},
                    "events": Num, "action_sessions": Num}},
     "other": {"events": Num, "sessions": Num}}
    `action_sessions` sums the actions' sessions: a session that used two
    actions counts twice. `other` is the suppressed rest, not attributable to a tool.
    """
    events = _metric(catalog, "usage_events", ("app_action",))
    sessions = _metric(catalog, "usage_sessions", ("app_action",))
    index = {label: i for i, label in enumerate(catalog.domain("app_action"))}
    apps: dict[str, Any] = {}
    for app, spec in catalog.apps.items():
        actions: dict[str, Any] = {}
        app_events: list[CellSum | None] = []
        app_sessions: list[CellSum | None] = []
        for action in spec.actions:
            i = index[f"{app}/{action}"]
            app_events.append(_get(table, events, "cell", i))
            app_sessions.append(_get(table, sessions, "cell", i))
            actions[action] = {"events": _num(app_events[-1]), "sessions": _num(app_sessions[-1])}
        apps[app] = {
            "title": spec.title,
            "actions": actions,
            "events": _num(total_sums(app_events)),
            "action_sessions": _num(total_sums(app_sessions)),
        }
    other = {"events": _num(_get(table, events, "other", 0)), "sessions": _num(_get(table, sessions, "other", 0))}
    return {"apps": apps, "other": other}


def completion(catalog: Catalog, table: ReadTable) -> dict[str, Any]:
    """Per tool: sessions that started it, that also completed it, and the completion rate.

    {app: {"title", "started": Num, "completed": Num, "rate": Num}}; rate is
    completed / started clipped to [0, 1] (see `_ratio` for its sd).
    """
    spec = _metric(catalog, "completion", ("app", "stage"))
    out: dict[str, Any] = {}
    for a, (app, app_spec) in enumerate(catalog.apps.items()):
        started = _get(table, spec, "cell", a * len(STAGES) + STARTED)
        completed = _get(table, spec, "cell", a * len(STAGES) + COMPLETED)
        out[app] = {
            "title": app_spec.title,
            "started": _num(started),
            "completed": _num(completed),
            "rate": _ratio(completed, started),
        }
    return out


def tool_combinations(catalog: Catalog, table: ReadTable) -> dict[str, Any]:
    """Ordered first-use pairs, which tool tends to come first, and a Sankey flow.

    {"pairs": {"a>b": {"from", "to", "sessions": Num, "share_before": Num}},
     "other": Num,
     "sankey": {"labels": [app..., app...], "sources", "targets", "values", "sd"}}
    share_before = n(a>b) / (n(a>b) + n(b>a)). The Sankey has every tool
    twice (first as "first used", then as "used next": label i and
    len(apps) + i) so that a>b and b>a do not form a cycle; only present,
    positive pairs are flows.
    """
    spec = _metric(catalog, "tool_pairs", ("app_pair",))
    domain = catalog.domain("app_pair")
    index = {label: i for i, label in enumerate(domain)}
    apps = catalog.app_names
    pairs: dict[str, Any] = {}
    sankey: dict[str, list[Any]] = {"labels": [*apps, *apps], "sources": [], "targets": [], "values": [], "sd": []}
    for label in domain:
        if ">" not in label:
            continue
        first, then = label.split(">", 1)
        ab = _get(table, spec, "cell", index[label])
        ba = _get(table, spec, "cell", index[f"{then}>{first}"])
        share = None
        if ab is not None and ba is not None:
            share = _share(ab.value, ab.variance, ba.value, ba.variance, max(ab.nodes, ba.nodes))
        pairs[label] = {"from": first, "to": then, "sessions": _num(ab), "share_before": share}
        if ab is not None and ab.value > 0:
            sankey["sources"].append(apps.index(first))
            sankey["targets"].append(len(apps) + apps.index(then))
            sankey["values"].append(ab.value)
            sankey["sd"].append(sd(ab))
    return {"pairs": pairs, "other": _num(_get(table, spec, "other", 0)), "sankey": sankey}


def session_shape(catalog: Catalog, table: ReadTable, raw: ReadTable | None = None) -> dict[str, Any]:
    """Histograms of tools per session and of session duration, with duration quartiles.

    {"tool_count": Histogram, "duration": Histogram + {"edges", "quantiles": {"p25", "p50", "p75": Num}}}
    where Histogram = {"labels": [str], "cells": [Num], "other": Num}; durations in minutes.
    """
    tools = _histogram(catalog, table, _metric(catalog, "session_tools", ("tool_count",)), "tool_count")
    spec = _metric(catalog, "session_duration", ("duration",))
    duration = _histogram(catalog, table, spec, "duration")
    edges = catalog.session.duration_edges_minutes
    duration["edges"] = list(edges)
    every = table if raw is None else raw
    duration["quantiles"] = _quantile_nums(edges, [_get(every, spec, "cell", i) for i in range(len(edges))])
    return {"tool_count": tools, "duration": duration}


def financial(catalog: Catalog, table: ReadTable, raw: ReadTable | None = None) -> dict[str, Any]:
    """Every single-attribute histogram metric: cells, shares and, for numeric attributes, quartiles.

    {metric: {"attribute", "kind", "description", "labels", "cells": [Num], "other": Num,
              "share": [Num], "quantiles": {"p25", "p50", "p75": Num} | None}}
    A share is a present cell's value over the total of the present values,
    negatives clipped to 0 (`other` is left out: its labels are unknown).
    """
    out: dict[str, Any] = {}
    for spec in catalog.metrics:
        if len(spec.dimensions) != 1 or not spec.dimensions[0].startswith(ATTRIBUTE_DIMENSION_PREFIX):
            continue
        attribute = spec.dimensions[0].removeprefix(ATTRIBUTE_DIMENSION_PREFIX)
        attr = catalog.attributes[attribute]
        cells = [_get(table, spec, "cell", i) for i in range(catalog.domain_size(spec))]
        entry: dict[str, Any] = {"attribute": attribute, "kind": attr.kind.value, "description": spec.description}
        entry.update(_histogram(catalog, table, spec, spec.dimensions[0]))
        entry["share"] = _shares(cells)
        every = cells if raw is None else [_get(raw, spec, "cell", i) for i in range(catalog.domain_size(spec))]
        entry["quantiles"] = None if attr.edges is None else _quantile_nums(attr.edges, every)
        out[spec.name] = entry
    return out


def breakdown(
    catalog: Catalog, table: ReadTable, metric: str = "industry_runway", raw: ReadTable | None = None
) -> dict[str, Any]:
    """A 2-D metric as a matrix, with per-row totals and, for a numeric second dimension, medians.

    {"metric", "rows_dimension", "columns_dimension", "rows": [str], "columns": [str],
     "cells": [[Num]], "other": [Num], "row_total": [Num], "median": [Num] | None}
    `other[r]` is row r's suppressed rest; `row_total[r]` its cells plus that.
    KeyError for a metric the catalog lacks, ValueError if it is not 2-D.
    """
    spec = catalog.metric(metric)
    if len(spec.dimensions) != 2:
        raise ValueError(f"metric {metric!r} is not two-dimensional")
    rows_dim, cols_dim = spec.dimensions
    rows, cols = catalog.domain(rows_dim), catalog.domain(cols_dim)
    grid = [[_get(table, spec, "cell", r * len(cols) + c) for c in range(len(cols))] for r in range(len(rows))]
    others = [_get(table, spec, "other", r) for r in range(len(rows))]
    edges = _numeric_edges(catalog, cols_dim)
    return {
        "metric": metric,
        "rows_dimension": rows_dim,
        "columns_dimension": cols_dim,
        "rows": list(rows),
        "columns": list(cols),
        "cells": [[_num(cs) for cs in row] for row in grid],
        "other": [_num(cs) for cs in others],
        "row_total": [_num(total_sums([*row, other])) for row, other in zip(grid, others, strict=False)],
        "median": None if edges is None else [
            _quantile_nums(edges, row, (0.5,))["p50"]
            for row in (grid if raw is None else [
                [_get(raw, spec, "cell", r * len(cols) + c) for c in range(len(cols))] for r in range(len(rows))
            ])
        ],
    }


def geography(
    catalog: Catalog, table: ReadTable, top: int | None = None, raw: ReadTable | None = None
) -> dict[str, Any]:
    """Sessions per country, ranked, then per UN M49 region, then the world: each session once (the default catalog).

    {"countries": [{"country", "sessions": Num}] (every country shown as present, or the
     top `top`; descending), "rest": Num (None when every country is listed),
     "countries_with_data": int, "per": "session" | "session and tool",
     "regions": [{"region": M49 code, "name", "sessions": Num, "countries": int}] (descending),
     "by_app": {app: {country: Num}} (a per-tool metric only), "unattributed": {app or "all": Num}}
    A country not shown as present folds into its M49 sub-region (protocol/regions.py); a
    region is shown when the sum of its folded countries (`raw`: every cell's sum) clears
    the same presence bound as a cell, its sd covering every folded country's noise
    (`countries`: how many folded into it). What no shown region holds (and `ZZ`, country
    unknown) is `unattributed`: sessions whose country could not be told apart from noise.
    Without `raw`, or for a per-tool metric, no region is shown.
    """
    spec, per = _geo_metric(catalog)
    countries, apps = catalog.domain("country"), catalog.app_names
    per_country: dict[str, CellSum] = {}
    by_app: dict[str, dict[str, Num | None]] = {app: {} for app in apps} if per == "session and tool" else {}
    for (a, c), cs in _grid_cells(table, spec, len(countries)):
        per_country[countries[c]] = fold_sums(per_country.get(countries[c]), cs)
        if by_app:
            by_app[apps[a]][countries[c]] = _num(cs)
    ranked = sorted(per_country.items(), key=lambda item: (-item[1].value, item[0]))
    regions: list[tuple[str, CellSum, int]] = []
    if spec is not None and raw is not None and not by_app:
        regions = _regions(catalog, spec, raw, set(per_country))
    world = _get(table, spec, "other", 0)
    for _, cs, _ in regions:  # what a shown region holds is not unattributed any more
        assert world is not None
        world = CellSum(world.value - cs.value, max(0.0, world.variance - cs.variance), world.nodes)
    unattributed = (
        {app: _num(_get(table, spec, "other", a)) for a, app in enumerate(apps)} if by_app
        else {"all": _num(world)}
    )
    return {
        "countries": [{"country": code, "sessions": _num(cs)} for code, cs in ranked[:top]],
        "rest": _num(total_sums(cs for _, cs in (ranked[top:] if top is not None else []))),
        "countries_with_data": len(ranked),
        "per": per,
        "regions": [{"region": code, "name": REGION_NAMES[code], "sessions": _num(cs), "countries": n}
                    for code, cs, n in regions],
        "by_app": {app: dict(sorted(cells.items())) for app, cells in by_app.items()},
        "unattributed": unattributed,
    }


def _regions(catalog: Catalog, spec: MetricSpec, raw: ReadTable, shown: set[str]) -> list[tuple[str, CellSum, int]]:
    """The M49 regions whose folded countries (every country not in `shown`) together clear the presence bound.

    Each region's sum and variance add its folded countries' merged sums and variances
    (countries without a merged cell add nothing); (code, sum, countries folded), descending.
    """
    countries = catalog.domain("country")
    folded: dict[str, CellSum] = {}
    count: dict[str, int] = defaultdict(int)
    for (_, kind, index), cs in metric_items(raw, spec.name):
        if kind != "cell" or countries[index] in shown:
            continue
        region = region_of(countries[index])
        if region is not None:
            folded[region] = fold_sums(folded.get(region), cs)
            count[region] += 1
    bounds = presence_thresholds(catalog, spec, [cs.variance for cs in folded.values()])
    significant = [(code, cs, count[code]) for (code, cs), bound in zip(folded.items(), bounds, strict=True)
                   if cs.value >= bound]
    return sorted(significant, key=lambda item: (-item[1].value, item[0]))


GEO_METRICS = ("geo_sessions",)
"""The metrics `geography` reads from its `raw` table: a caller may hand it those alone."""


def _geo_metric(catalog: Catalog) -> tuple[MetricSpec | None, str]:
    """The catalog's geography metric: per session (country), or per session and tool (app x country)."""
    spec = _metric(catalog, "geo_sessions", ("country",))
    if spec is not None:
        return spec, "session"
    return _metric(catalog, "geo_sessions", ("app", "country")), "session and tool"


PEAK_METRICS = ("peak_events",)
"""The metrics `peak_times` reads: a caller may hand it tables of these alone."""


def peak_times(catalog: Catalog, tables_by_window: Mapping[int, ReadTable]) -> dict[str, Any]:
    """Events by hour of week (UTC), over all tools and per tool.

    {"weekdays": ["Mon".."Sun"], "hours": ["00".."23"], "events": 7x24 [[Num]],
     "by_app": {app: 7x24 [[Num]]}, "windows": int}
    The weekday is that of the window's start (Monday = 0), the hour the
    metric's `hour` dimension. A daily window starts at 00:00 UTC, so this is
    exact. A weekly window holds every weekday and its cells only the hour:
    then "weekdays" is ["Mon-Sun"] and each matrix has that one row.
    """
    spec = _metric(catalog, PEAK_METRICS[0], ("app", "hour"))
    hours, apps = catalog.domain("hour"), catalog.app_names
    days = WEEKDAYS if catalog.window_seconds <= DAY else ("Mon-Sun",)
    total: dict[tuple[int, int], CellSum] = {}
    per_app: dict[int, dict[tuple[int, int], CellSum]] = defaultdict(dict)
    for window_start, table in tables_by_window.items():
        day = weekday(window_start) if len(days) > 1 else 0
        for (a, h), cs in _grid_cells(table, spec, len(hours)):
            total[(day, h)] = fold_sums(total.get((day, h)), cs)
            per_app[a][(day, h)] = fold_sums(per_app[a].get((day, h)), cs)

    def matrix(sums: Mapping[tuple[int, int], CellSum]) -> list[list[Num | None]]:
        return [[_num(sums.get((d, h))) for h in range(len(hours))] for d in range(len(days))]

    return {
        "weekdays": list(days),
        "hours": list(hours),
        "events": matrix(total),
        "by_app": {app: matrix(per_app[a]) for a, app in enumerate(apps)},
        "windows": len(tables_by_window),
    }


def weekday(window_start: int) -> int:
    """UTC weekday of a unix time, Monday = 0 (1970-01-01 was a Thursday)."""
    return (window_start // DAY + 3) % 7


def _significance(catalog: Catalog, spec: MetricSpec | None) -> Significant | None:
    if spec is None:
        return None
    return lambda cs: cs.value >= presence_threshold(catalog, spec, cs.variance)


def trends(
    catalog: Catalog, tables_by_window: Mapping[int, ReadTable], raw_by_window: Mapping[int, ReadTable] | None = None
) -> dict[str, Any]:
    """Per-window series per tool and per country, with growth from the first half of the range to the second.

    {"windows": [window_start], "tools": {app: {"title", "series": [Num], "growth": Num}},
     "countries": [{"country", "series": [Num], "growth": Num}] (by total, descending)}
    A tool's series counts sessions that started it (completion's `started`):
    one cell per tool and window, where the per-country geo cells would sum
    hundreds of noisy cells. A country's series is its geo_sessions (summed over tools
    in an older per-tool catalog).
    growth = (sum of the second half) / (sum of the first) - 1, sd by the
    delta method; None with fewer than 2 windows, a first half <= 0, or
    either half not clear of its noise. The halves sum every window's cell
    (`raw_by_window`, all cells, when given), not only the windows shown.
    """
    layout = Layout.from_catalog(catalog)
    raw = None if raw_by_window is None else {w: Cells.from_table(layout, t) for w, t in raw_by_window.items()}
    return trends_of_cells(catalog, layout, {w: Cells.from_table(layout, t) for w, t in tables_by_window.items()}, raw)


def trends_of_cells(
    catalog: Catalog, layout: Layout, cells_by_window: Mapping[int, Cells], raw_by_window: Mapping[int, Cells] | None = None
) -> dict[str, Any]:
    """`trends` over columnar tables with presence inferred: the country sums vectorized, same numbers bit for bit."""
    windows = sorted(cells_by_window)
    parts = [cells_by_window[w] for w in windows]
    raw_parts = parts if raw_by_window is None else [raw_by_window[w] for w in windows]
    stages = _metric(catalog, "completion", ("app", "stage"))
    tools: dict[str, Any] = {}
    for a, (app, app_spec) in enumerate(catalog.apps.items()):
        series = [_cell(layout, part, stages, a * len(STAGES) + STARTED) for part in parts]
        every = [_cell(layout, part, stages, a * len(STAGES) + STARTED) for part in raw_parts]
        tools[app] = {"title": app_spec.title, "series": [_num(cs) for cs in series],
                      "growth": _growth(every, _significance(catalog, stages))}
    geo, _ = _geo_metric(catalog)
    countries = catalog.domain("country")
    return {
        "windows": windows,
        "tools": tools,
        "countries": [] if geo is None else _country_series(layout, parts, raw_parts, geo, countries, catalog),
    }


def _country_series(
    layout: Layout, parts: Sequence[Cells], raw_parts: Sequence[Cells], geo: MetricSpec, countries: Sequence[str],
    catalog: Catalog,
) -> list[dict[str, Any]]:
    # Per window and country, geo_sessions cells summed over tools in the table's key order (fold_sums'
    # order, so floats add as the dict code adds them); then over windows in order.
    n, width = len(parts), len(countries)
    if n == 0:
        return []
    first, count = layout.offset[(geo.name, "cell")]
    rows = count // width

    def columns_of(ps: Sequence[Cells]) -> tuple[Array, Array, Array, Array]:
        def grid(column: Callable[[Cells], Array]) -> Array:
            return np.stack([column(p)[first : first + count] for p in ps]).reshape(n, rows, width)

        rank = np.zeros((n, len(layout)), dtype=np.int64)
        for i, part in enumerate(ps):
            rank[i, part.order] = np.arange(len(part.order))
        by_order = np.argsort(rank[:, first : first + count].reshape(n, rows, width), axis=1, kind="stable")
        value, variance, nodes, present = (
            np.take_along_axis(grid(column), by_order, axis=1)
            for column in (lambda p: p.value, lambda p: p.variance, lambda p: p.nodes, lambda p: p.present)
        )
        if value.dtype != object and int(np.abs(value).max(initial=0)) * rows * n >= INT64_SAFE:
            value = value.astype(object)
        c_value, c_variance = value[:, 0].copy(), variance[:, 0].copy()
        for r in range(1, rows):  # absent cells hold 0 and 0.0, which add nothing
            c_value += value[:, r]
            c_variance += variance[:, r]
        return c_value, c_variance, np.asarray(nodes.max(axis=1)), np.asarray(present.any(axis=1))

    def over(columns: tuple[Array, Array, Array, Array], windows: range) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
        c_value, c_variance, c_nodes, c_present = columns
        v, var = c_value[0] * 0, np.zeros(width)
        for w in windows:
            v = v + c_value[w]
            var = var + c_variance[w]
        sel = slice(windows.start, windows.stop)
        present_any: Array = np.asarray(c_present[sel].any(axis=0))
        return v.tolist(), var.tolist(), c_nodes[sel].max(axis=0, initial=0).tolist(), present_any.tolist()

    shown = columns_of(parts)
    every = shown if raw_parts is parts else columns_of(raw_parts)
    totals = over(shown, range(n))
    half = n // 2
    firsts, seconds = over(every, range(half)), over(every, range(n - half, n))
    ranked = sorted((c for c in range(width) if totals[3][c]), key=lambda c: (-totals[0][c], countries[c]))
    columns: list[list[list[Any]]] = [a.T.tolist() for a in (shown[0], np.sqrt(shown[1]), shown[2], shown[3])]
    values, sds, counts, held = columns
    significant = _significance(catalog, geo)
    out = []
    for c in ranked:
        series = [
            {"value": v, "sd": s, "nodes": k} if p else None
            for v, s, k, p in zip(values[c], sds[c], counts[c], held[c], strict=False)
        ]
        growth = None
        if half and firsts[3][c] and seconds[3][c]:
            growth = _growth_of(CellSum(firsts[0][c], firsts[1][c], firsts[2][c]),
                                CellSum(seconds[0][c], seconds[1][c], seconds[2][c]), significant)
        out.append({"country": countries[c], "series": series, "growth": growth})
    return out


def headline(catalog: Catalog, table: ReadTable, windows: int, nodes: int) -> dict[str, Any]:
    """The top-line numbers of a view.

    {"sessions": Num, "events": Num, "tools": int, "tools_in_catalog": int,
     "countries": int, "windows": int, "nodes": int}
    sessions sums session_tools (every session is in exactly one tool-count
    bucket) including its `other`; events sums usage_events likewise. tools
    and countries count those with a present, positive cell.
    """
    tools_spec = _metric(catalog, "session_tools", ("tool_count",))
    events_spec = _metric(catalog, "usage_events", ("app_action",))
    sessions_spec = _metric(catalog, "usage_sessions", ("app_action",))
    geo, _ = _geo_metric(catalog)
    app_of = [label.split("/", 1)[0] for label in catalog.domain("app_action")]
    used = {
        app_of[index]
        for spec in (events_spec, sessions_spec)
        if spec is not None
        for (_, kind, index), cs in metric_items(table, spec.name)
        if kind == "cell" and cs.value > 0
    }
    countries = {c for (_, c), cs in _grid_cells(table, geo, len(catalog.domain("country"))) if cs.value > 0}
    return {
        "sessions": _num(total_sums(_entries(table, tools_spec))),
        "events": _num(total_sums(_entries(table, events_spec))),
        "tools": len(used),
        "tools_in_catalog": len(catalog.apps),
        "countries": len(countries),
        "windows": windows,
        "nodes": nodes,
    }


# ---- insight helpers -----------------------------------------------------------


def _metric(catalog: Catalog, name: str, dimensions: tuple[str, ...]) -> MetricSpec | None:
    # A catalog without the metric (or with other dimensions) just has no data for the insight.
    try:
        spec = catalog.metric(name)
    except KeyError:
        return None
    return spec if spec.dimensions == dimensions else None


def _cell(layout: Layout, cells: Cells, spec: MetricSpec | None, index: int) -> CellSum | None:
    if spec is None:
        return None
    i = layout.position[(spec.name, "cell", index)]
    if not cells.present[i]:
        return None
    return CellSum(
        cells.value[i].item() if cells.value.dtype != object else cells.value[i], cells.variance[i].item(), cells.nodes[i].item()
    )


def _get(table: ReadTable, spec: MetricSpec | None, kind: Kind, index: int) -> CellSum | None:
    return None if spec is None else table.get((spec.name, kind, index))


def _entries(table: ReadTable, spec: MetricSpec | None) -> list[CellSum]:
    return [] if spec is None else [cs for _, cs in metric_items(table, spec.name)]


def _grid_cells(table: ReadTable, spec: MetricSpec | None, width: int) -> list[tuple[tuple[int, int], CellSum]]:
    """A 2-D metric's present cells as ((row, column), sum)."""
    if spec is None:
        return []
    return [(divmod(index, width), cs) for (_, kind, index), cs in metric_items(table, spec.name) if kind == "cell"]


def _histogram(catalog: Catalog, table: ReadTable, spec: MetricSpec | None, dimension: str) -> dict[str, Any]:
    labels = catalog.domain(dimension)
    return {
        "labels": list(labels),
        "cells": [_num(_get(table, spec, "cell", i)) for i in range(len(labels))],
        "other": _num(_get(table, spec, "other", 0)),
    }


def _shares(cells: Sequence[CellSum | None]) -> list[Num | None]:
    present = [cs for cs in cells if cs is not None]
    total = sum(max(0, cs.value) for cs in present)
    variance = math.fsum(cs.variance for cs in present)
    return [
        None
        if cs is None
        else _share(max(0, cs.value), cs.variance, total - max(0, cs.value), max(0.0, variance - cs.variance), cs.nodes)
        for cs in cells
    ]


def _numeric_edges(catalog: Catalog, dimension: str) -> tuple[float, ...] | None:
    if dimension == "duration":
        return catalog.session.duration_edges_minutes
    if dimension.startswith(ATTRIBUTE_DIMENSION_PREFIX):
        return catalog.attributes[dimension.removeprefix(ATTRIBUTE_DIMENSION_PREFIX)].edges
    return None
