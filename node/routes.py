"""The ingest routes of the node's public app: events, Plausible's and Umami's endpoints, the client script."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from node.clientscript import ClientScript
from node.ingest import Ingestor, post_events
from node.plausible import post_plausible_event
from node.umami import post_umami_send
from protocol.catalog import Catalog


@dataclass(frozen=True)
class IngestTarget:
    """What the ingest handlers need: the ingestor (filter and writer) and the catalog."""

    ingestor: Ingestor
    catalog: Catalog


INGEST = web.AppKey("ingest", IngestTarget)
CLIENT_SCRIPT = web.AppKey("client_script", ClientScript)


async def _events(request: web.Request) -> web.Response:
    return await post_events(request, request.app[INGEST].ingestor)


async def _plausible(request: web.Request) -> web.Response:
    target = request.app[INGEST]
    return await post_plausible_event(request, target.ingestor, target.catalog)


async def _umami(request: web.Request) -> web.Response:
    target = request.app[INGEST]
    return await post_umami_send(request, target.ingestor, target.catalog)


async def _preflight(request: web.Request) -> web.Response:
    return web.Response(status=204)  # the CORS middleware adds the headers


async def _client_script(request: web.Request) -> web.Response:
    """`GET /js/liberation.js`: the browser client, compacted and gzipped (node/clientscript.py)."""
    return request.app[CLIENT_SCRIPT].respond(request)


def add_ingest_routes(app: web.Application) -> None:
    """Register the ingest routes; the app's startup must set `app[INGEST]`."""
    app[CLIENT_SCRIPT] = ClientScript.from_package()
    app.router.add_post("/v1/events", _events)
    app.router.add_route("OPTIONS", "/v1/events", _preflight)
    app.router.add_post("/api/event", _plausible)
    app.router.add_route("OPTIONS", "/api/event", _preflight)
    app.router.add_post("/api/send", _umami)
    app.router.add_route("OPTIONS", "/api/send", _preflight)
    app.router.add_get("/js/liberation.js", _client_script)
