"""`POST /api/event`: the Plausible Events API, so sites running Plausible's tracker can point it here.

The tracker posts JSON as text/plain with short or long names (n|name, u|url,
d|domain, r|referrer, p|props, h, i, v). The domain picks the app
(`plausible.domains`; an unknown domain is dropped), the name is the action
(`plausible.events` maps names that differ, e.g. pageview = "start"), props
become attributes through the same privacy filter, and the server clock
decides the time. The session is derived as node/trackers.py says.
Answers mirror Plausible's: 202 `ok`, with `x-plausible-dropped: 1` when the
event was dropped (counted by reason in `liberation_node_events_rejected`).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from node.ingest import Ingestor, decode_body
from node.trackers import coerce, ingest_mapped, visitor_key
from protocol import jsontext
from protocol.catalog import Catalog
from protocol.errors import BadRequest, ProblemType

LONG_NAMES = {"n": "name", "u": "url", "d": "domain", "r": "referrer", "p": "props"}


def _field(data: dict[str, Any], short: str) -> Any:
    return data.get(short, data.get(LONG_NAMES[short]))


def _props(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if isinstance(raw, str):
        try:
            raw = jsontext.loads(raw)
        except json.JSONDecodeError:
            raise BadRequest("`props` must be an object or a JSON object string", slug=ProblemType.INVALID_EVENT) from None
    if not isinstance(raw, dict):
        raise BadRequest("`props` must be an object", slug=ProblemType.INVALID_EVENT)
    return raw


def _dropped() -> web.Response:
    return web.Response(status=202, text="ok", headers={"x-plausible-dropped": "1"})


async def post_plausible_event(request: web.Request, ingestor: Ingestor, catalog: Catalog) -> web.Response:
    """Map one Plausible event onto the catalog and ingest it like any live event."""
    address = ingestor.client_address(request)
    ingestor.check_rate(address)
    data = decode_body(await request.read(), "application/json")
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object", slug=ProblemType.INVALID_EVENT)
    name, url = _field(data, "n"), _field(data, "u")
    if not isinstance(name, str) or not name:
        raise BadRequest("`n` (name) is required", slug=ProblemType.INVALID_EVENT, extra={"field": "name"})
    if not isinstance(url, str) or not url:
        raise BadRequest("`u` (url) is required", slug=ProblemType.INVALID_EVENT, extra={"field": "url"})
    domain = _field(data, "d")
    if domain is None:
        domain = urlsplit(url).hostname or ""
    if not isinstance(domain, str):
        raise BadRequest("`d` (domain) must be a string", slug=ProblemType.INVALID_EVENT, extra={"field": "domain"})
    props = _props(_field(data, "p"))

    settings = ingestor.settings.plausible
    # A tracker may list several domains ("a.org,b.org"): the first mapped one wins.
    app = next((settings.domains[d.strip()] for d in domain.split(",") if d.strip() in settings.domains), None)
    # Plausible's visitor id: hash(salt, IP + UA + domain), here under the day's salt (node/trackers.py).
    outcome = await ingest_mapped(
        ingestor, catalog,
        app=app,
        action=settings.events.get(name, name),
        attributes={k: coerce(catalog, k, v) for k, v in props.items()},
        address=address,
        session_key=visitor_key(b"plausible", address, request, domain),
    )
    address = None
    if not outcome.stored:
        ingestor.metrics.plausible_dropped.inc()
        return _dropped()
    return web.Response(status=202, text="ok")
