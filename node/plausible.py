"""`POST /api/event`: the Plausible Events API, so sites running Plausible's tracker can point it here.

The tracker posts JSON as text/plain with short or long names (n|name, u|url,
d|domain, r|referrer, p|props, h, i, v). The domain picks the app (an unknown
domain is dropped), the name is the action, props become attributes through
the same privacy filter, and the server clock decides the time. The tracker
sends no session id: as Plausible does, one is derived in memory from the
client IP, User-Agent and domain under the day's salt; neither is stored.
Answers mirror Plausible's: 202 `ok`, with `x-plausible-dropped: 1` when the
event was dropped.
"""

from __future__ import annotations

import json
import math
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from pydantic import ValidationError

from node.ingest import Ingestor, decode_body
from node.privacy import FilteredEvent
from node.windows import WindowClosed
from protocol import jsontext
from protocol.catalog import AttributeKind, Catalog
from protocol.errors import BadRequest, ProblemType
from protocol.events import Event

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


def _coerce(catalog: Catalog, name: str, value: Any) -> Any:
    # Plausible props arrive as strings: numbers are read back for numeric attributes.
    spec = catalog.attributes.get(name)
    if spec is not None and spec.kind in (AttributeKind.NUMBER, AttributeKind.MONEY) and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return number if math.isfinite(number) else value
    return value


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
    action = settings.events.get(name, name)
    if app is None or app not in catalog.apps or action not in catalog.apps[app].actions:
        ingestor.metrics.plausible_dropped.inc()
        return _dropped()

    now = ingestor.clock()
    user_agent = request.headers.get("User-Agent", "")
    # Plausible's visitor id: hash(salt, IP + UA + domain). Here the material goes
    # straight into the HMAC under the day's salt and is then dropped.
    # aiohttp keeps header bytes that are not UTF-8 as surrogate escapes: encoding them back
    # hashes the User-Agent as the bytes sent (a plain .encode() raised: a 500).
    agent = user_agent.encode("utf-8", "surrogateescape")
    session_key = b"\x00".join([b"plausible", address.packed if address else b"", agent, domain.encode()])
    try:
        event = Event(
            app=app,
            action=action,
            attributes={k: _coerce(catalog, k, v) for k, v in props.items()},
            timestamp=now.isoformat(),  # validated from text
            session_id="plausible",  # placeholder: the filter uses session_key instead
        )
    except ValidationError:
        raise BadRequest(
            "`props` must be at most 32 flat values with slug names", slug=ProblemType.INVALID_EVENT, extra={"field": "props"}
        ) from None
    results, dropped = await ingestor.filter([event], address=address, session_keys=[session_key])
    address = None
    accepted = [r for r in results if isinstance(r, FilteredEvent)]
    try:
        if accepted:
            await ingestor.commit(accepted, dropped)
    except WindowClosed:
        accepted = []
    if not accepted:
        ingestor.metrics.plausible_dropped.inc()
        return _dropped()
    return web.Response(status=202, text="ok")
