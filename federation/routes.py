"""The hub's HTTP handlers and their routes: intake of snapshots and contributions, rounds, the admin API, log, views."""

from __future__ import annotations

import asyncio
import json
import re
import time

from aiohttp import web
from prometheus_client import Counter

from federation import admin
from federation.contributions import ContributionResult
from federation.intake_commit import IntakeResult
from federation.openapi import openapi_document
from federation.service import HUB
from federation.translog import GENESIS, head_message
from protocol.errors import BadRequest, NotFound, ProblemType, UnsupportedMediaType
from protocol.windows import parse_window
from runtime import enrollment
from runtime.registry import KINDS
from runtime.service import Route
from runtime.tokens import admin_service, enrollment_body
from runtime.version import liberation_version
from views.ranges import CACHE_CONTROL, catalog_document, view_handler, views_index, windows_document
from views.tidy import cells_handler

# ---- intake -------------------------------------------------------------------

MSGPACK_TYPES = frozenset({"application/msgpack", "application/x-msgpack", "application/vnd.msgpack", "application/octet-stream"})


async def _envelope(request: web.Request, rejected: Counter) -> bytes:
    """The posted envelope's bytes; 415 (counted in `rejected`) unless it comes as msgpack."""
    if request.content_type not in MSGPACK_TYPES:
        rejected.labels("unsupported-media-type").inc()
        raise UnsupportedMediaType("send the envelope as application/msgpack", slug=ProblemType.UNSUPPORTED_MEDIA_TYPE)
    return await request.read()


def _receipt(result: IntakeResult | ContributionResult) -> web.Response:
    """202 for an envelope accepted now, 200 for one accepted before (the same bytes)."""
    body: dict[str, object] = {"status": result.status, "node": result.node, "window_start": result.window_start,
                               "digest": result.digest}
    if result.log_seq is not None:
        body["log_seq"] = result.log_seq
    return web.json_response(body, status=202 if result.status == "accepted" else 200)


async def _post_snapshot(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    data = await _envelope(request, hub.metrics.rejected)
    return _receipt(await hub.intake.submit(data))  # acked after its group commit: acked means durable


async def _post_contribution(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    data = await _envelope(request, hub.metrics.contributions_rejected)
    return _receipt(await hub.contributions.submit(data))  # answered after its group commit


KEY_ID = re.compile(r"[0-9a-f]{32}")


async def _stored_snapshot(request: web.Request) -> web.Response:
    """A stored envelope by key id and window: how a node whose own copy was lost gets its committed noise back."""
    hub = request.app[HUB]
    key_id = request.match_info["key_id"]
    if not KEY_ID.fullmatch(key_id):
        raise BadRequest("a key id is 32 lowercase hexadecimal characters", slug=ProblemType.INVALID_KEY)
    window = parse_window(request.match_info["window"])
    envelope = await asyncio.to_thread(hub.store.envelope, key_id, window)
    if envelope is None:
        raise NotFound("this hub holds no snapshot of that key for that window", slug=ProblemType.NO_SNAPSHOT)
    # Accepted bytes never change for a (key, window): a different envelope is refused as equivocation.
    return web.Response(
        body=envelope, content_type="application/msgpack", headers={"Cache-Control": "public, max-age=86400, immutable"}
    )


# ---- rounds -------------------------------------------------------------------


async def _keepers(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    return web.json_response(await asyncio.to_thread(hub.keepers.listing), headers={"Cache-Control": CACHE_CONTROL})


async def _rounds(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    rows = await asyncio.to_thread(hub.rounds.records.rounds)
    return web.json_response({"rounds": [
        {"catalog": r.catalog, "window_start": r.window_start, "window_end": r.window_end, "state": r.state,
         "deadline": r.deadline, "keepers": list(r.keepers),
         "nodes": len(r.participants) if r.participants is not None else None, "published": r.published,
         "note": r.note, "url": f"/v1/rounds/{r.window_start}?catalog={r.catalog}"}
        for r in rows
    ]})


async def _round(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    catalog = hub.views.catalog(request.query.get("catalog"))
    window = parse_window(request.match_info["window"])
    records = hub.rounds.records
    rnd = await asyncio.to_thread(records.get, catalog.hash, window)
    if rnd is None:
        raise NotFound("no round of that catalog for that window", slug=ProblemType.NO_ROUND)
    return web.json_response(await asyncio.to_thread(records.document, rnd))


# ---- admin API ----------------------------------------------------------------


async def _admin_nodes(request: web.Request) -> web.Response:
    hub = admin_service(request, HUB)
    return web.json_response((await admin.list_nodes(hub, enrollment.NoParams())).model_dump())


async def _admin_enroll(request: web.Request) -> web.Response:
    hub = admin_service(request, HUB)
    data = await enrollment_body(request)
    kind, url = data.get("kind", "node"), data.get("url")
    if kind not in KINDS:
        raise BadRequest(
            "`kind` is \"node\" (the default), \"hub\" (a child hub) or \"keeper\"", slug=ProblemType.INVALID_ENROLLMENT
        )
    if url is not None and not isinstance(url, str):
        raise BadRequest("`url` is a keeper's base URL", slug=ProblemType.INVALID_ENROLLMENT)
    done = await admin.enroll(hub, admin.EnrollParams(name=data["name"], public_key=data["public_key"], kind=kind, url=url))
    return web.json_response(done.record.model_dump(), status=200 if done.changed else 201)


async def _admin_revoke(request: web.Request) -> web.Response:
    hub = admin_service(request, HUB)
    done = await admin.revoke(hub, enrollment.RevokeParams(node=request.match_info["node"]))
    return web.json_response(done.record.model_dump())


async def _admin_incidents(request: web.Request) -> web.Response:
    hub = admin_service(request, HUB)
    rows = hub.store.cursor().execute("SELECT * FROM incidents ORDER BY detected").fetchall()
    keys = ("kind", "node", "window_start", "digest_kept", "digest_offered", "detected")
    return web.json_response({"incidents": [dict(zip(keys, r, strict=False)) for r in rows]})


# ---- public: log, views, health -----------------------------------------------


async def _log(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    try:
        after = int(request.query.get("after", "0"))
        limit = min(10_000, int(request.query.get("limit", "1000")))
    except ValueError:
        raise BadRequest("`after` and `limit` are integers", slug=ProblemType.INVALID_QUERY) from None
    if not 0 <= after < 2**63:
        raise BadRequest("`after` is a log sequence number, 0 <= after < 2^63", slug=ProblemType.INVALID_QUERY)
    rows = hub.store.cursor().execute(
        "SELECT seq, key_id, window_start, window_end, catalog, digest, epsilon, accepted, prev_hash, entry_hash, "
        "coalesce(kind, 'snapshot') FROM translog WHERE seq > ? ORDER BY seq LIMIT ?", [after, max(1, limit)]
    ).fetchall()
    entries = [
        {
            "seq": int(seq), "kind": kind, "node": node, "window_start": int(ws), "window_end": int(we),
            "catalog": cat, "digest": digest, "epsilon": json.loads(eps), "accepted": int(acc), "prev_hash": prev,
            "entry_hash": h,
        }
        for seq, node, ws, we, cat, digest, eps, acc, prev, h, kind in rows
    ]
    head = hub.store.cursor().execute("SELECT seq, entry_hash FROM translog ORDER BY seq DESC LIMIT 1").fetchall()
    head_seq, head_hash = (int(head[0][0]), str(head[0][1])) if head else (0, GENESIS)
    signature = hub.key.sign(head_message(head_seq, head_hash))
    return web.json_response(
        {
            "hub": hub.key.public.key_id,
            "head": {"seq": head_seq, "entry_hash": head_hash, "signature": signature.hex(), "public_key": hub.key.public.b64},
            "entries": entries,
        }
    )


async def _view(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB]
    started = time.perf_counter()
    response = await view_handler(request, hub.views)
    hub.metrics.view_seconds.labels(request.match_info["name"]).observe(time.perf_counter() - started)
    return response


async def _about(request: web.Request) -> web.Response:
    """Who serves this page: a hub merges many communities (the dashboard's node page says otherwise)."""
    return web.json_response({"kind": "hub", "key_id": request.app[HUB].key.public.key_id},
                             headers={"Cache-Control": CACHE_CONTROL})


async def _cells(request: web.Request) -> web.StreamResponse:
    return await cells_handler(request, request.app[HUB].views)


async def _windows(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    catalog = hub.views.catalog(request.query.get("catalog"))
    body = await asyncio.to_thread(windows_document, hub.store, catalog)
    return web.json_response(body, headers={"Cache-Control": CACHE_CONTROL})


async def _merged(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    catalog = hub.views.catalog(request.query.get("catalog"))
    window = parse_window(request.match_info["window"])
    body = await asyncio.to_thread(hub.views.merged, hub.store, catalog, window)
    return web.Response(body=body, content_type="application/json", headers={"Cache-Control": CACHE_CONTROL})


async def _catalog(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    catalog = hub.views.catalog(request.query.get("catalog"))
    return web.json_response(catalog_document(catalog), headers={"Cache-Control": CACHE_CONTROL})


async def _export(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    catalog = hub.views.catalog(request.query.get("catalog"))
    text = request.query.get("window")
    if not text:
        raise BadRequest("`window` is required (2026-11-23)", slug=ProblemType.INVALID_QUERY)
    envelope = await asyncio.to_thread(hub.upstream.export, catalog, parse_window(text))
    return web.Response(
        body=envelope, content_type="application/msgpack", headers={"Cache-Control": "public, max-age=86400"}
    )


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(), headers={"Cache-Control": CACHE_CONTROL})


async def _healthz(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    return web.json_response(
        {"status": "ok", "version": liberation_version(), "key_id": hub.key.public.key_id, "catalogs": list(hub.catalogs)}
    )


ROUTES: tuple[Route, ...] = (
    ("POST", "/v1/snapshots", _post_snapshot),
    ("GET", "/v1/snapshots/{key_id}/{window}", _stored_snapshot),
    ("POST", "/v1/contributions", _post_contribution),
    ("GET", "/v1/keepers", _keepers),
    ("GET", "/v1/rounds", _rounds),
    ("GET", "/v1/rounds/{window}", _round),
    ("GET", "/v1/admin/nodes", _admin_nodes),
    ("POST", "/v1/admin/nodes", _admin_enroll),
    ("DELETE", "/v1/admin/nodes/{node}", _admin_revoke),
    ("GET", "/v1/admin/incidents", _admin_incidents),
    ("GET", "/v1/log", _log),
    ("GET", "/v1/views", views_index),
    ("GET", "/v1/views/{name}", _view),
    ("GET", "/v1/about", _about),
    ("GET", "/v1/cells", _cells),
    ("GET", "/v1/windows", _windows),
    ("GET", "/v1/merged/{window}", _merged),
    ("GET", "/v1/catalog", _catalog),
    ("GET", "/v1/export", _export),
    ("GET", "/openapi.json", _openapi),
    ("GET", "/healthz", _healthz),
)
"""Every route of the hub's public port (the dashboard's pages are added beside them)."""
