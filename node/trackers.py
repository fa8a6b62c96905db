"""What the drop-in endpoints for other trackers share (Plausible's, Umami's): the visitor's session key,
the mapping of a site's event onto the catalog, and one event through the same filter as any other.

Neither tracker sends a session id. As Plausible does, one is derived from the
client IP, User-Agent and site under the day's secret salt: the material goes
straight into the HMAC and is dropped; only the keyed hash is stored, and the
salt is destroyed at export, so visits cannot be linked across days.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from node.geo import IPAddress
from node.ingest import Ingestor
from node.privacy import FilteredEvent
from node.windows import WindowClosed
from protocol.catalog import AttributeKind, Catalog
from protocol.errors import BadRequest, ProblemType
from protocol.events import ATTRIBUTE_NAME, MAX_ATTRIBUTE_STRING, MAX_ATTRIBUTES, Event

UNKNOWN_SITE = "unknown-site"
"""The site (Plausible domain, Umami website id) is not mapped to an app in the node's settings."""


def visitor_key(tracker: bytes, address: IPAddress | None, request: web.Request, site: str) -> bytes:
    """The session key of a visitor: tracker, IP, User-Agent and site, hashed under the day's salt by the filter."""
    # aiohttp keeps header bytes that are not UTF-8 as surrogate escapes: encoding them back
    # hashes the User-Agent as the bytes sent (a plain .encode() raised: a 500).
    agent = request.headers.get("User-Agent", "").encode("utf-8", "surrogateescape")
    return b"\x00".join([tracker, address.packed if address else b"", agent, site.encode("utf-8", "surrogatepass")])


def coerce(catalog: Catalog, name: str, value: Any) -> Any:
    """Trackers send props as strings: numbers are read back for numeric attributes."""
    spec = catalog.attributes.get(name)
    if spec is not None and spec.kind in (AttributeKind.NUMBER, AttributeKind.MONEY) and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return number if math.isfinite(number) else value
    return value


def flat_attributes(catalog: Catalog, raw: dict[Any, Any]) -> tuple[dict[str, Any], int]:
    """The values an Event can carry (slug names, scalars, short strings), coerced; and how many were dropped.

    What is dropped here is what the filter would drop anyway (no declared
    attribute has such a name or value); it is counted with the filter's drops.
    """
    kept: dict[str, Any] = {}
    for key, value in raw.items():
        if len(kept) == MAX_ATTRIBUTES or not isinstance(key, str) or not ATTRIBUTE_NAME.fullmatch(key):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            continue
        if isinstance(value, str) and len(value) > MAX_ATTRIBUTE_STRING:
            continue
        if isinstance(value, bool | int | float | str):
            kept[key] = coerce(catalog, key, value)
    return kept, len(raw) - len(kept)


@dataclass(frozen=True)
class Outcome:
    """One tracker event's fate: stored, or the reason slug it was not; attributes dropped."""

    stored: bool
    reason: str | None = None
    dropped_attributes: int = 0


async def ingest_mapped(
    ingestor: Ingestor,
    catalog: Catalog,
    *,
    app: str | None,
    action: str,
    attributes: dict[str, Any],
    address: IPAddress | None,
    session_key: bytes,
    dropped: int = 0,
) -> Outcome:
    """Filter and store one event a tracker sent, mapped to (app, action); refusals are counted by reason."""
    if app is None:
        ingestor.refuse(UNKNOWN_SITE)
        return Outcome(False, UNKNOWN_SITE)
    if app not in catalog.apps:
        ingestor.refuse("undeclared-app")
        return Outcome(False, "undeclared-app")
    if action not in catalog.apps[app].actions:
        ingestor.refuse("undeclared-action")
        return Outcome(False, "undeclared-action")
    try:
        event = Event(
            app=app,
            action=action,
            attributes=attributes,
            timestamp=ingestor.clock().isoformat(),  # the server clock decides; validated from text
            session_id="tracker-visitor",  # placeholder: the filter hashes session_key instead
        )
    except ValidationError:
        raise BadRequest(
            "props must be at most 32 flat values with slug names", slug=ProblemType.INVALID_EVENT, extra={"field": "props"}
        ) from None
    results, filtered_out = await ingestor.filter([event], address=address, session_keys=[session_key])
    accepted = [r for r in results if isinstance(r, FilteredEvent)]
    if not accepted:
        reason = next(r.reason for r in results if not isinstance(r, FilteredEvent))
        ingestor.refuse(reason)
        return Outcome(False, reason)
    try:
        await ingestor.commit(accepted, dropped + filtered_out)
    except WindowClosed:
        ingestor.refuse("window-closed")
        return Outcome(False, "window-closed")
    return Outcome(True, None, dropped + filtered_out)
