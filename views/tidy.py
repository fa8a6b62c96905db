"""`GET /v1/cells`: the merged cells of a date range as a tidy CSV, one row per observation.

    window,metric,<one column per dimension>,value,sd,nodes

One row per window and shown cell: a cell whose window's merged sum clears the
presence bound (federation/significance.py) is listed with its labels; the
rest of its row of the domain is folded into a row whose last dimension is
`other`. A cell absent from a window is not shown there, which is not zero: no
row is written for it, so a chart of these rows draws gaps, never false zeros.
`pandas.read_csv(url)` takes it as is (docs/operations.md shows it, and
Grafana's Infinity data source).
"""

from __future__ import annotations

import asyncio
import csv
import io
import math
from datetime import UTC, datetime

from aiohttp import web

from protocol.catalog import ATTRIBUTE_DIMENSION_PREFIX, OTHER, Catalog, MetricSpec
from protocol.errors import BadRequest, ProblemType
from protocol.windows import DAY
from views.columns import CellTable
from views.ranges import CACHE_CONTROL, RangeData, ViewService


def column_name(dimension: str) -> str:
    """A dimension's column: `country`, `hour`, or an attribute's name (`industry` for `attr:industry`)."""
    return dimension.removeprefix(ATTRIBUTE_DIMENSION_PREFIX)


def _window_label(window: int) -> str:
    moment = datetime.fromtimestamp(window, UTC)
    return moment.strftime("%Y-%m-%d") if window % DAY == 0 else moment.strftime("%Y-%m-%dT%H:00Z")


def metrics_of(catalog: Catalog, text: str | None) -> list[MetricSpec]:
    """The metrics `?metric=a,b` names (all when absent), in catalog order; 400 for an unknown one."""
    if not text:
        return list(catalog.metrics)
    names = [n.strip() for n in text.split(",") if n.strip()]
    known = {m.name for m in catalog.metrics}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise BadRequest(f"no metric {unknown[0]!r} in the catalog; see /v1/catalog", slug=ProblemType.INVALID_QUERY)
    return [m for m in catalog.metrics if m.name in names]


def tidy_csv(data: RangeData, metrics: list[MetricSpec]) -> bytes:
    """The shown cells of every window of the range, one row each (module docstring)."""
    catalog = data.catalog
    columns: list[str] = []
    for metric in metrics:
        for dim in metric.dimensions:
            if column_name(dim) not in columns:
                columns.append(column_name(dim))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["window", "metric", *columns, "value", "sd", "nodes"])
    names = [m.name for m in metrics]
    specs = {m.name: m for m in metrics}
    for window, cells in data.thresholded_windows().items():
        label = _window_label(window)
        table = CellTable(data.layout, cells, names)
        for (name, kind, index), cs in sorted(table.items(), key=lambda item: (names.index(item[0][0]), item[0][1], item[0][2])):
            spec = specs[name]
            if kind == "cell":
                labels = catalog.cell_labels(spec, index)
            else:  # the prefix's other: every dimension but the last, then `other`
                head = catalog.cell_labels(spec, index * catalog.shape(spec)[-1])[:-1]
                labels = (*head, OTHER)
            by_column = dict(zip((column_name(d) for d in spec.dimensions), labels, strict=False))
            writer.writerow([label, name, *(by_column.get(c, "") for c in columns), cs.value,
                             f"{math.sqrt(cs.variance):.3f}", cs.nodes])
    return out.getvalue().encode()


async def cells_handler(request: web.Request, service: ViewService) -> web.StreamResponse:
    """`GET /v1/cells?from=&to=&metric=&catalog=`: text/csv, cached and ETagged like the views."""
    catalog = service.catalog(request.query.get("catalog"))
    metrics = metrics_of(catalog, request.query.get("metric"))
    start, end = await asyncio.to_thread(service.date_range, catalog, request.query)
    name = "cells:" + ",".join(m.name for m in metrics)
    body, etag = await asyncio.to_thread(service.render_range, name, catalog, start, end, lambda d: tidy_csv(d, metrics))
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    if etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type="text/csv", charset="utf-8", headers=headers)
