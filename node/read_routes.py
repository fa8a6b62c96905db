"""The node's read routes: its published snapshots and contributions, ledger, own summary, views, health.

Everything here is public and published already (noised, signed); the ingest routes are in
node/routes.py.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from datetime import datetime

from aiohttp import web

from node.openapi import serve_openapi
from node.service import NODE, Node
from node.views import windows_document
from protocol.envelope import verify_envelope
from protocol.errors import NotFound, ProblemType
from protocol.windows import format_utc, parse_window
from runtime.service import Handler
from runtime.version import liberation_version
from views.ranges import CACHE_CONTROL, catalog_document, view_handler, views_index
from views.tidy import cells_handler


async def _healthz(request: web.Request) -> web.Response:
    node = request.app[NODE]
    return web.json_response(
        {"status": "ok", "version": liberation_version(), "key_id": node.key.public.key_id, "catalog": node.catalog.hash}
    )


async def _about(request: web.Request) -> web.Response:
    """Who serves this page: a node shows one community's own published numbers (the dashboard says so)."""
    node = request.app[NODE]
    return web.json_response(
        {"kind": "node", "name": node.settings.display_name, "key_id": node.key.public.key_id, "communities": 1},
        headers={"Cache-Control": CACHE_CONTROL},
    )


async def _envelope(request: web.Request, stored: Callable[[Node, int], bytes | None], missing: NotFound) -> web.Response:
    """The committed envelope of the window in the path, exactly as pushed to the hub: its bytes never change."""
    node = request.app[NODE]
    window = parse_window(request.match_info["window"], node.windows.seconds)
    envelope = await asyncio.to_thread(stored, node, window)
    if envelope is None:
        raise missing
    return web.Response(body=envelope, content_type="application/msgpack",
                        headers={"Cache-Control": "public, max-age=86400, immutable"})


async def _snapshot(request: web.Request) -> web.Response:
    return await _envelope(request, lambda node, window: node.publisher.verified(window),
                           NotFound("no published snapshot for that window", slug=ProblemType.NO_SNAPSHOT))


async def _contribution(request: web.Request) -> web.Response:
    """A committed contribution: masked counts (uniform without the keepers' seeds) and seeds sealed to the keepers."""
    return await _envelope(request, lambda node, window: node.publisher.contribution(window),
                           NotFound("no contribution for that window", slug=ProblemType.NO_CONTRIBUTION))


def _published(node: Node) -> list[dict[str, object]]:
    rows = node.store.cursor().execute(
        "SELECT window_start, window_end, seq, digest, created FROM snapshots ORDER BY window_start"
    ).fetchall()
    return [
        {"window_start": format_utc(w), "window_end": format_utc(e), "seq": seq, "digest": d, "created": format_utc(c),
         "url": f"/v1/snapshots/{w}"}
        for w, e, seq, d, c in rows
    ]


async def _snapshots(request: web.Request) -> web.Response:
    node = request.app[NODE]
    items = await asyncio.to_thread(_published, node)
    return web.json_response({"node": node.key.public.key_id, "catalog": node.catalog.hash, "snapshots": items})


def _contributed(node: Node) -> list[dict[str, object]]:
    rows = node.store.cursor().execute(
        "SELECT window_start, window_end, digest, created FROM contributions ORDER BY window_start"
    ).fetchall()
    return [
        {"window_start": format_utc(w), "window_end": format_utc(e), "digest": d, "created": format_utc(c),
         "url": f"/v1/contributions/{w}"}
        for w, e, d, c in rows
    ]


async def _contributions(request: web.Request) -> web.Response:
    node = request.app[NODE]
    items = await asyncio.to_thread(_contributed, node)
    return web.json_response({"node": node.key.public.key_id, "catalog": node.catalog.hash, "contributions": items})


async def _ledger(request: web.Request) -> web.Response:
    node = request.app[NODE]
    entries = await asyncio.to_thread(node.publisher.ledger)
    return web.json_response(
        {
            "node": node.key.public.key_id,
            "epsilon_cap_per_day": node.publisher.cap,
            "entries": [
                {"window_start": format_utc(e.window_start), "metric": e.metric, "epsilon": e.epsilon,
                 "scale": e.scale, "threshold": e.threshold, "catalog": e.catalog, "digest": e.digest}
                for e in entries
            ],
        }
    )


async def _local_summary(request: web.Request) -> web.Response:
    """The node's own published view: its snapshots, decoded (public, nothing un-noised)."""
    node = request.app[NODE]
    published = await asyncio.to_thread(_published, node)
    recent = published[-7:]
    windows = []
    for item in recent:
        envelope = await asyncio.to_thread(
            node.publisher.verified, int(datetime.fromisoformat(str(item["window_start"]).replace("Z", "+00:00")).timestamp())
        )
        if envelope is None:
            continue
        snapshot = verify_envelope(envelope).snapshot
        metrics = {}
        for name, cells in snapshot.metrics.items():
            spec = node.catalog.metric(name)
            metrics[name] = {
                "threshold": cells.threshold,
                "sd": round(math.sqrt(cells.variance), 2),
                "cells": [
                    {"labels": list(node.catalog.cell_labels(spec, i)), "value": v}
                    for i, v in zip(cells.idx, cells.val, strict=False)
                ],
            }
        windows.append({"window_start": item["window_start"], "window_end": item["window_end"], "metrics": metrics})
    return web.json_response(
        {
            "node": node.key.public.key_id,
            "catalog": node.catalog.hash,
            "note": "the node's published snapshots (noised and thresholded), newest last",
            "windows": windows,
        },
        headers={"Cache-Control": "public, max-age=60"},
    )


async def _view(request: web.Request) -> web.StreamResponse:
    return await view_handler(request, request.app[NODE].views)


async def _cells(request: web.Request) -> web.StreamResponse:
    return await cells_handler(request, request.app[NODE].views)


async def _catalog(request: web.Request) -> web.Response:
    return web.json_response(catalog_document(request.app[NODE].catalog), headers={"Cache-Control": CACHE_CONTROL})


async def _windows(request: web.Request) -> web.Response:
    node = request.app[NODE]
    body = await asyncio.to_thread(windows_document, node.publisher, node.catalog)
    return web.json_response(body, headers={"Cache-Control": CACHE_CONTROL})


READ_ROUTES: tuple[tuple[str, Handler], ...] = (
    ("/healthz", _healthz),
    ("/v1/local/summary", _local_summary),
    ("/v1/snapshots", _snapshots),
    ("/v1/snapshots/{window}", _snapshot),
    ("/v1/contributions", _contributions),
    ("/v1/contributions/{window}", _contribution),
    ("/v1/ledger", _ledger),
    ("/v1/views", views_index),
    ("/v1/views/{name}", _view),
    ("/v1/catalog", _catalog),
    ("/v1/about", _about),
    ("/v1/cells", _cells),
    ("/v1/windows", _windows),
    ("/openapi.json", serve_openapi),
)
"""(path, handler) of the node's GET (and HEAD) routes on its public port; the dashboard's pages are added beside them."""
