"""The keeper's app factory: explicit wiring of store, registry, keys, catalogs and the answerer; its routes.

    GET    /healthz                    liveness, key id
    GET    /v1/keeper                  identity: Ed25519 key, X25519 sealing key and its signature (for enrollment)
    POST   /v1/rounds/check            a hub's signed round request: can this set be answered? (stores nothing)
    POST   /v1/rounds/answer           the same request: the signed answer, once per round, then the same bytes
    GET    /v1/ledger                  the rounds answered
    GET/POST /v1/admin/nodes, DELETE /v1/admin/nodes/{node}    enrolled nodes (bearer token)

Every request comes from a hub or the operator: the keeper has no public traffic. `/metrics` is
served on the operator's listener only.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from keeper import admin
from keeper.answer import Answerer
from keeper.identity import KeeperIdentity, load_or_create_identity
from keeper.metrics import KeeperMetrics
from keeper.settings import KeeperSettings
from keeper.store import KeeperStore
from protocol.catalog import Catalog, load_catalog
from protocol.errors import ProblemType, UnsupportedMediaType
from protocol.files import make_private_dir
from protocol.keys import PublicKey
from protocol.windows import format_utc
from runtime import enrollment
from runtime.admin import add_admin_socket
from runtime.datadir import SERVICE_WAIT_SECONDS, DataDirLock, open_locked
from runtime.metrics_listener import add_metrics_listener
from runtime.problems import problem_middleware
from runtime.registry import Registry
from runtime.service import Route, add_routes
from runtime.tokens import admin_service, enrollment_body
from runtime.version import liberation_version

log = logging.getLogger("liberation.keeper")

MSGPACK = "application/msgpack"
Now = Callable[[], float]


@dataclass
class Keeper:
    """Everything one running keeper owns; reachable from handlers through `KEEPER`."""

    settings: KeeperSettings
    identity: KeeperIdentity
    store: KeeperStore
    registry: Registry
    catalogs: dict[str, Catalog]
    metrics: KeeperMetrics
    answerer: Answerer
    lock: DataDirLock  # this process's hold on the data dir, released by close_keeper


KEEPER = web.AppKey("keeper", Keeper)


def data_paths(settings: KeeperSettings) -> dict[str, Path]:
    return {"db": settings.data_dir / "keeper.duckdb", "keys": settings.data_dir / "keys"}


def open_keeper(settings: KeeperSettings, *, now: Now = time.time, wait_seconds: float = 0.0) -> Keeper:
    """Open (creating on first start) everything a keeper needs; no server involved.

    The data dir's lock comes first (runtime/datadir.py): one process at a time uses the files.
    """
    return open_locked(settings.data_dir, "keeper", lambda lock: _open(settings, now, lock), wait_seconds=wait_seconds)


def close_keeper(keeper: Keeper) -> None:
    keeper.store.close()
    keeper.lock.release()


def _open(settings: KeeperSettings, now: Now, lock: DataDirLock) -> Keeper:
    make_private_dir(settings.data_dir)
    identity = load_or_create_identity(settings.data_dir)
    store = KeeperStore(data_paths(settings)["db"], memory_limit=settings.memory_limit)
    registry = Registry(store, now=now)
    catalogs = {c.hash: c for c in [load_catalog(), *(load_catalog(p) for p in settings.catalogs)]}
    metrics = KeeperMetrics()
    answerer = Answerer(
        store=store, registry=registry, identity=identity, catalogs=catalogs,
        hub_keys=[PublicKey.from_b64(k) for k in settings.hub_keys], metrics=metrics,
        max_bytes=settings.max_request_bytes, skew_seconds=settings.clock_skew_seconds, now=now,
    )
    return Keeper(settings, identity, store, registry, catalogs, metrics, answerer, lock)


async def _body(request: web.Request) -> bytes:
    if request.content_type not in (MSGPACK, "application/octet-stream"):
        raise UnsupportedMediaType("send the round request as application/msgpack", slug=ProblemType.UNSUPPORTED_MEDIA_TYPE)
    return await request.read()


async def _check(request: web.Request) -> web.Response:
    keeper = request.app[KEEPER]
    checked = await asyncio.to_thread(keeper.answerer.check, await _body(request))
    keeper.metrics.checked.inc()
    return web.json_response({"status": "ok", "nodes": len(checked.nodes), "participants": checked.participants})


async def _answer(request: web.Request) -> web.Response:
    keeper = request.app[KEEPER]
    envelope, fresh = await asyncio.to_thread(keeper.answerer.answer, await _body(request))
    return web.Response(body=envelope, content_type=MSGPACK, headers={"X-Liberation-Answer": "new" if fresh else "stored"})


async def _identity(request: web.Request) -> web.Response:
    keeper = request.app[KEEPER]
    statement = keeper.identity.statement
    return web.json_response({
        "key_id": statement.key_id,
        "public_key": statement.identity.b64,
        "hpke_key": base64.b64encode(statement.hpke).decode(),
        "hpke_signature": base64.b64encode(statement.signature).decode(),
        "catalogs": [h for h, c in keeper.catalogs.items() if c.federation is not None],
    })


async def _ledger(request: web.Request) -> web.Response:
    keeper = request.app[KEEPER]
    rows = await asyncio.to_thread(keeper.store.ledger)
    return web.json_response({
        "keeper": keeper.identity.key_id,
        "rounds": [
            {"catalog": r.catalog, "window_start": format_utc(r.window_start), "window_end": format_utc(r.window_end),
             "nodes": r.nodes, "participants": r.participants, "digest": r.digest, "answered": format_utc(r.answered)}
            for r in rows
        ],
    })


async def _healthz(request: web.Request) -> web.Response:
    keeper = request.app[KEEPER]
    return web.json_response({"status": "ok", "key_id": keeper.identity.key_id})


async def _admin_nodes(request: web.Request) -> web.Response:
    keeper = admin_service(request, KEEPER)
    return web.json_response((await admin.list_nodes(keeper, enrollment.NoParams())).model_dump())


async def _admin_enroll(request: web.Request) -> web.Response:
    keeper = admin_service(request, KEEPER)
    data = await enrollment_body(request)
    done = await admin.enroll(keeper, admin.EnrollParams(name=data["name"], public_key=data["public_key"]))
    return web.json_response(done.record.model_dump(), status=201)


async def _admin_revoke(request: web.Request) -> web.Response:
    keeper = admin_service(request, KEEPER)
    done = await admin.revoke(keeper, enrollment.RevokeParams(node=request.match_info["node"]))
    return web.json_response(done.record.model_dump())


def create_app(settings: KeeperSettings, *, now: Now = time.time) -> web.Application:
    """Build the keeper's aiohttp application; resources open in cleanup_ctx, not at import."""
    app = web.Application(middlewares=[problem_middleware], client_max_size=settings.max_request_bytes)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        keeper = await asyncio.to_thread(open_keeper, settings, now=now, wait_seconds=SERVICE_WAIT_SECONDS)
        app[KEEPER] = keeper
        if not settings.hub_keys:  # said by the service, not by every command that opens its files
            log.warning("no hub_keys configured: every round request is refused until a hub's key is pinned")
        log.info("keeper ready", extra={"key_id": keeper.identity.key_id, "hubs": len(settings.hub_keys),
                                        "admin_api": settings.admin_token is not None})
        yield
        close_keeper(keeper)

    app.cleanup_ctx.append(lifecycle)
    add_admin_socket(
        app, service="keeper", version=liberation_version(), data_dir=settings.data_dir,
        target=lambda app: app[KEEPER], operations=admin.KEEPER_OPERATIONS,
    )
    add_metrics_listener(
        app, service="keeper", host=settings.metrics_host, port=settings.metrics_port,
        render=lambda app: app[KEEPER].metrics.render,
    )
    routes: list[Route] = [
        ("POST", "/v1/rounds/check", _check),
        ("POST", "/v1/rounds/answer", _answer),
        ("GET", "/v1/keeper", _identity),
        ("GET", "/v1/ledger", _ledger),
        ("GET", "/v1/admin/nodes", _admin_nodes),
        ("POST", "/v1/admin/nodes", _admin_enroll),
        ("DELETE", "/v1/admin/nodes/{node}", _admin_revoke),
        ("GET", "/healthz", _healthz),
    ]
    add_routes(app, routes)
    return app
