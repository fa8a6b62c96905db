"""`POST /api/send`: Umami's collect endpoint, so sites running Umami's tracker can point it here.

Umami's tracker script posts `application/json` (so browsers send a CORS
preflight first) of the shape `{"type": "event", "payload": {"website",
"hostname", "url", "referrer", "title", "screen", "language", "name", "data",
...}}`, and reads the answer as JSON (`disabled`, `cache`; we send neither, so it
never sends `x-umami-cache` back). Mapped as Plausible's events are:
`umami.websites` maps the website id to an app (an unknown id is dropped),
`name` is the action through `umami.events`, and a send without a name (the
tracker's page view) is the event `pageview` (map it, e.g. pageview = "start",
or it is dropped); `data` becomes attributes through the same privacy filter.
The session is derived as node/trackers.py says: never from the payload's `id`
or `vid` (a person's identity), which are read by nobody, like every other
payload field. Other send types (identify, performance, engagement) store
nothing. Answers: 202 `{"accepted": 1, ...}`, or 202 `{"accepted": 0,
"dropped": REASON}` (counted by reason in `liberation_node_events_rejected`); a
malformed body is a 400 problem, as on every endpoint.
"""

from __future__ import annotations

from aiohttp import web

from node.ingest import Ingestor, decode_body
from node.trackers import flat_attributes, ingest_mapped, visitor_key
from protocol.catalog import Catalog
from protocol.errors import BadRequest, ProblemType

SEND_TYPES = frozenset({"event", "identify", "performance", "engagement"})
PAGEVIEW = "pageview"
MAX_WEBSITE_CHARS = 64


def _dropped(reason: str) -> web.Response:
    return web.json_response({"accepted": 0, "dropped": reason}, status=202)


async def post_umami_send(request: web.Request, ingestor: Ingestor, catalog: Catalog) -> web.Response:
    """Map one Umami send onto the catalog and ingest it like any live event."""
    address = ingestor.client_address(request)
    ingestor.check_rate(address)
    data = decode_body(await request.read(), "application/json")
    if not isinstance(data, dict) or not isinstance(data.get("payload"), dict):
        raise BadRequest('body must be {"type": ..., "payload": {...}}', slug=ProblemType.INVALID_EVENT)
    kind, payload = data.get("type"), data["payload"]
    if not isinstance(kind, str) or kind not in SEND_TYPES:
        raise BadRequest(
            f"`type` must be one of {', '.join(sorted(SEND_TYPES))}", slug=ProblemType.INVALID_EVENT, extra={"field": "type"}
        )
    website = payload.get("website")
    if not isinstance(website, str) or not 0 < len(website) <= MAX_WEBSITE_CHARS:
        raise BadRequest(
            "`payload.website` (the website id) is required", slug=ProblemType.INVALID_EVENT, extra={"field": "website"}
        )
    name = payload.get("name")
    if name is not None and not isinstance(name, str):
        raise BadRequest("`payload.name` must be a string", slug=ProblemType.INVALID_EVENT, extra={"field": "name"})
    raw = payload.get("data")
    if raw is not None and not isinstance(raw, dict):
        raise BadRequest("`payload.data` must be an object", slug=ProblemType.INVALID_EVENT, extra={"field": "data"})
    if kind != "event":
        return _dropped("not-an-event")  # identify data describes a person: never stored

    settings = ingestor.settings.umami
    attributes, dropped = flat_attributes(catalog, raw or {})
    outcome = await ingest_mapped(
        ingestor, catalog,
        app=settings.websites.get(website),
        action=settings.events.get(name or PAGEVIEW, name or PAGEVIEW),
        attributes=attributes,
        address=address,
        session_key=visitor_key(b"umami", address, request, website),
        dropped=dropped,
    )
    address = None
    if not outcome.stored:
        return _dropped(outcome.reason or "dropped")
    return web.json_response({"accepted": 1, "dropped_attributes": outcome.dropped_attributes}, status=202)
