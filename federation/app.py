"""The hub's app factory: explicit wiring of store, registry, catalogs, intake, archive, views and routes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pyarrow as pa
from aiohttp import web

from federation import admin
from federation.archive import Archive
from federation.contributions import ContributionIntake
from federation.intake import Intake, size_limit
from federation.keepers import Keepers
from federation.logwriter import LogWriter
from federation.metrics import HubMetrics
from federation.openapi import openapi_document
from federation.rounds import PublishedRounds, Rounds
from federation.settings import HubSettings
from federation.store import HubStore
from federation.translog import GENESIS, head_message
from federation.upstream import UpstreamExporter
from protocol import jsontext
from protocol.catalog import Catalog, load_catalog
from protocol.errors import (
    BadRequest,
    NotFound,
    ProblemType,
    UnsupportedMediaType,
)
from protocol.keys import SigningKey, load_or_create
from protocol.snapshot import max_envelope_size
from protocol.windows import parse_window
from runtime.admin import add_admin_socket
from runtime.datadir import SERVICE_WAIT_SECONDS, DataDirLock
from runtime.metrics_listener import add_metrics_listener
from runtime.problems import problem_middleware
from runtime.registry import KINDS, Registry
from runtime.tokens import require_bearer
from runtime.version import liberation_version
from views.cors import views_cors_middleware
from views.dashboard import add_dashboard_routes
from views.ranges import (
    CACHE_CONTROL,
    RoundRanges,
    StoreRanges,
    ViewService,
    catalog_document,
    view_handler,
    views_index,
    windows_document,
)
from views.tidy import cells_handler

log = logging.getLogger("liberation.hub")

Now = Callable[[], float]


@dataclass
class Hub:
    """Everything one running hub owns; reachable from handlers through `HUB`."""

    settings: HubSettings
    store: HubStore
    registry: Registry
    catalogs: dict[str, Catalog]
    archive: Archive
    intake: Intake
    metrics: HubMetrics
    key: SigningKey
    views: ViewService
    upstream: UpstreamExporter
    keepers: Keepers
    contributions: ContributionIntake
    rounds: Rounds
    now: Now
    version: list[int] = field(default_factory=lambda: [0])  # bumped on every accepted snapshot and published round
    lock: DataDirLock | None = None  # this process's hold on the data dir, released by close_hub

    @property
    def default_catalog(self) -> Catalog:
        return next(iter(self.catalogs.values()))


HUB = web.AppKey("hub", Hub)


def data_paths(settings: HubSettings) -> dict[str, Path]:
    """Where a hub keeps its files under its data dir."""
    root = settings.data_dir
    return {"db": root / "hub.duckdb", "key": root / "keys" / "signing.key", "archive": root / "archive"}


def load_catalogs(settings: HubSettings) -> dict[str, Catalog]:
    """The catalogs this hub merges, by hash: the federation's first (the views' default), then the built-in default."""
    catalogs = [load_catalog(settings.catalog), load_catalog()] + [load_catalog(p) for p in settings.catalogs]
    merged: dict[str, Catalog] = {}
    for catalog in catalogs:
        merged.setdefault(catalog.hash, catalog)
    return merged


def open_hub(settings: HubSettings, *, now: Now = time.time, wait_seconds: float = 0.0) -> Hub:
    """Open (creating on first start) everything a hub needs; no server involved.

    The data dir's lock comes first: nothing in it is opened while another process holds it (a
    service waits `wait_seconds` for a command on its files to finish).
    """
    # The dir is made 0700 whatever the umask: envelopes, registry, keys.
    lock = DataDirLock.acquire(settings.data_dir, "hub", wait_seconds=wait_seconds)
    try:
        hub = _open(settings, now)
    except BaseException:
        lock.release()
        raise
    hub.lock = lock
    return hub


def close_hub(hub: Hub) -> None:
    hub.store.close()
    if hub.lock is not None:
        hub.lock.release()


@asynccontextmanager
async def offline_hub(settings: HubSettings) -> AsyncIterator[Hub]:
    """A stopped hub opened by this process: how the CLI works on its files."""
    hub = await asyncio.to_thread(open_hub, settings)
    try:
        yield hub
    finally:
        close_hub(hub)


def _open(settings: HubSettings, now: Now) -> Hub:
    # pyarrow's first array imports pandas where it is installed (a test environment's half a second of
    # CPU): pay it while opening, not under the first snapshots' intake.
    pa.array([0])
    paths = data_paths(settings)
    key = load_or_create(paths["key"])
    store = HubStore(paths["db"], memory_limit=settings.memory_limit)
    registry = Registry(store, now=now)
    catalogs = load_catalogs(settings)
    max_bytes = size_limit(catalogs, settings.max_snapshot_bytes)
    for catalog in catalogs.values():
        if max_envelope_size(catalog) > max_bytes:
            log.warning(
                "max_snapshot_bytes is below what a catalog's snapshots can reach: raise it",
                extra={"catalog": catalog.hash, "largest_envelope": max_envelope_size(catalog), "limit": max_bytes},
            )
    archive = Archive(paths["archive"])
    archive.reconcile(store, catalogs)  # files a crash left unwritten after their commit
    metrics = HubMetrics()
    version = [int(store.cursor().execute(
        "SELECT (SELECT count(*) FROM envelopes) + (SELECT count(*) FROM rounds WHERE state = 'published')"
    ).fetchall()[0][0])]

    def bump() -> None:
        version[0] += 1

    log_writer = LogWriter(store)
    keepers = Keepers(store, registry)
    rounds = Rounds(store=store, log=log_writer, keepers=keepers, catalogs=catalogs, key=key, metrics=metrics,
                    settings=settings.rounds, now=now, on_publish=bump)
    contributions = ContributionIntake(
        store=store, registry=registry, keepers=keepers, catalogs=catalogs, log=log_writer, metrics=metrics,
        horizon_seconds=settings.window_horizon_days * 86_400, skew_seconds=settings.clock_skew_seconds,
        deadline=rounds.deadline, now=now,
    )
    intake = Intake(
        store=store,
        registry=registry,
        catalogs=catalogs,
        archive=archive,
        metrics=metrics,
        max_bytes=max_bytes,
        horizon_seconds=settings.window_horizon_days * 86_400,
        skew_seconds=settings.clock_skew_seconds,
        log=log_writer,
        now=now,
        on_accept=bump,
    )
    def data_version() -> int:
        return version[0]

    ranges = RoundRanges(StoreRanges(store, data_version), PublishedRounds(store), data_version)
    views = ViewService(ranges, catalogs, data_version, now=now)
    upstream = UpstreamExporter(store, key, export_after=settings.export_after_seconds, now=now)
    return Hub(settings, store, registry, catalogs, archive, intake, metrics, key, views, upstream,
               keepers, contributions, rounds, now, version)


# ---- intake -------------------------------------------------------------------

MSGPACK_TYPES = frozenset({"application/msgpack", "application/x-msgpack", "application/vnd.msgpack", "application/octet-stream"})


async def _post_snapshot(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    if request.content_type not in MSGPACK_TYPES:
        hub.metrics.rejected.labels("unsupported-media-type").inc()
        raise UnsupportedMediaType("send the envelope as application/msgpack", slug=ProblemType.UNSUPPORTED_MEDIA_TYPE)
    data = await request.read()
    result = await hub.intake.submit(data)  # acked after its group commit: acked means durable
    body = {"status": result.status, "node": result.node, "window_start": result.window_start, "digest": result.digest}
    if result.log_seq is not None:
        body["log_seq"] = result.log_seq
    return web.json_response(body, status=202 if result.status == "accepted" else 200)


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


async def _post_contribution(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    if request.content_type not in MSGPACK_TYPES:
        hub.metrics.contributions_rejected.labels("unsupported-media-type").inc()
        raise UnsupportedMediaType("send the envelope as application/msgpack", slug=ProblemType.UNSUPPORTED_MEDIA_TYPE)
    data = await request.read()
    result = await hub.contributions.submit(data)  # answered after its group commit
    body: dict[str, object] = {"status": result.status, "node": result.node, "window_start": result.window_start,
                               "digest": result.digest}
    if result.log_seq is not None:
        body["log_seq"] = result.log_seq
    return web.json_response(body, status=202 if result.status == "accepted" else 200)


async def _keepers(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    return web.json_response(await asyncio.to_thread(hub.keepers.listing), headers={"Cache-Control": CACHE_CONTROL})


async def _rounds(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    rows = await asyncio.to_thread(hub.rounds.rounds)
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
    rnd = await asyncio.to_thread(hub.rounds.get, catalog.hash, window)
    if rnd is None:
        raise NotFound("no round of that catalog for that window", slug=ProblemType.NO_ROUND)
    return web.json_response(await asyncio.to_thread(hub.rounds.document, rnd))


async def _round_loop(hub: Hub, stop: asyncio.Event) -> None:
    """Move rounds through their states every `rounds.interval_seconds` until `stop`."""
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            try:
                await hub.rounds.step(session)
            except Exception as exc:  # noqa: BLE001 - keep the loop alive, say why
                log.error("rounds pass failed: %s", type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=hub.settings.rounds.interval_seconds)


# ---- admin API ----------------------------------------------------------------


def _require_admin(request: web.Request) -> Hub:
    hub = request.app[HUB]
    require_bearer(request, hub.settings.admin_token)
    return hub


async def _admin_nodes(request: web.Request) -> web.Response:
    hub = _require_admin(request)
    return web.json_response((await admin.list_nodes(hub, admin.NoParams())).model_dump())


async def _admin_enroll(request: web.Request) -> web.Response:
    hub = _require_admin(request)
    try:
        data = jsontext.loads(await request.text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("body must be JSON: {\"name\": ..., \"public_key\": ...}", slug=ProblemType.MALFORMED_BODY) from None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not isinstance(data.get("public_key"), str):
        raise BadRequest("`name` and `public_key` (base64 or PEM) are required", slug=ProblemType.INVALID_ENROLLMENT)
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
    hub = _require_admin(request)
    done = await admin.revoke(hub, admin.RevokeParams(node=request.match_info["node"]))
    return web.json_response(done.record.model_dump())


async def _admin_incidents(request: web.Request) -> web.Response:
    hub = _require_admin(request)
    rows = hub.store.cursor().execute("SELECT * FROM incidents ORDER BY detected").fetchall()
    keys = ("kind", "node", "window_start", "digest_kept", "digest_offered", "detected")
    return web.json_response({"incidents": [dict(zip(keys, r, strict=False)) for r in rows]})


# ---- public: log, health ------------------------------------------------


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


Route = tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]


def create_app(settings: HubSettings, *, now: Now = time.time) -> web.Application:
    """Build the hub's aiohttp application; resources open in cleanup_ctx, not at import."""
    app = web.Application(
        middlewares=[views_cors_middleware(settings.views_cors_origins), problem_middleware],
        client_max_size=settings.max_snapshot_bytes + 1,
    )

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        hub = await asyncio.to_thread(open_hub, settings, now=now, wait_seconds=SERVICE_WAIT_SECONDS)
        app[HUB] = hub
        log.info("hub ready", extra={
            "key_id": hub.key.public.key_id, "admin_api": settings.admin_token is not None,
            "max_snapshot_bytes": hub.intake.max_bytes,
        })
        stop = asyncio.Event()
        rounds = asyncio.create_task(_round_loop(hub, stop), name="rounds")
        yield
        stop.set()
        await rounds
        close_hub(hub)

    app.cleanup_ctx.append(lifecycle)
    add_admin_socket(
        app, service="hub", version=liberation_version(), data_dir=settings.data_dir,
        target=lambda app: app[HUB], operations=admin.HUB_OPERATIONS,
    )
    add_metrics_listener(
        app, service="hub", host=settings.metrics_host, port=settings.metrics_port,
        render=lambda app: app[HUB].metrics.render,
    )
    routes: list[Route] = [
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
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
    add_dashboard_routes(app)
    return app
