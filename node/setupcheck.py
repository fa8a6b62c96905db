"""The operator's setup check: is the wiring right, today, before any window is published?

Served on the operator's listener only (beside `/metrics`, loopback by default;
never the public port): `GET /setup` (a page) and `GET /setup.json`. It shows
what the node already holds and nothing more: the origins and tracker mappings
it runs with, today's events stored (on disk), accepted and refused by reason
(in memory since the UTC day began or the node started), and the last events'
hour, app, action and country as stored: no session, no minute, no attribute.
"""

from __future__ import annotations

import asyncio
import html
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from node.pacing import Pacing
from node.tally import TallyReading
from protocol.windows import DAY

if TYPE_CHECKING:
    from node.service import Node

LAST_EVENTS = 20
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

HINTS = {
    "origin-not-allowed": (
        "{n} event(s) came from sites not in cors_origins. The node's log names each origin "
        "(\"refused events from an origin\"); add one with `liberation node sites add ORIGIN`, then restart."
    ),
    "unknown-site": (
        "{n} tracker event(s) named a Plausible domain or Umami website id no setting maps: "
        "`liberation node sites add ORIGIN --app APP --plausible-domain DOMAIN` (or --umami-website ID)."
    ),
    "undeclared-action": (
        "{n} event(s) named an action their app does not declare. A tracker's event name "
        "(Plausible's or Umami's `pageview`) needs `--event NAME=ACTION`; check the catalog (`liberation catalog show`)."
    ),
    "undeclared-app": "{n} event(s) named an app the catalog does not declare (`liberation catalog show`).",
    "invalid-event": "{n} event(s) were malformed (400): the answer's `errors` name the field.",
    "timestamp-future": "{n} event(s) carried a time too far from the node's clock: check the clocks.",
}


def _hour(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:00Z")


def setup_report(node: Node, tally: TallyReading) -> dict[str, Any]:
    """What the setup check shows, as a JSON-able document (runs in a worker thread: it reads the store).

    `tally`: today's counts, read on the event loop that keeps them.
    """
    now = node.clock()
    day = int(now.timestamp()) // DAY * DAY
    node.store.drain(rest=Pacing())  # acked rows wait in a stage: move them, paced, as every pass does
    con = node.store.cursor()
    stored = int(con.execute("SELECT count(*) FROM events WHERE hour >= ?", [day]).fetchall()[0][0])
    last = con.execute(
        "SELECT hour, app, action, country FROM events ORDER BY seq DESC LIMIT ?", [LAST_EVENTS]
    ).fetchall()
    settings = node.settings
    hints = [HINTS[r].format(n=n) for r, n in tally.refused.items() if r in HINTS]
    if not settings.cors_origins:
        hints.append("cors_origins is empty: only pages this node serves itself can send events from a browser.")
    if stored == 0 and tally.accepted == 0:
        hints.append("No event stored today yet: send one (docs/operations.md, \"Check your setup\").")
    return {
        "node": node.key.public.key_id,
        "catalog": node.catalog.hash,
        "wiring": {
            "cors_origins": list(settings.cors_origins),
            "plausible_domains": dict(settings.plausible.domains),
            "plausible_events": dict(settings.plausible.events),
            "umami_websites": dict(settings.umami.websites),
            "umami_events": dict(settings.umami.events),
            "push_hub_url": settings.push.hub_url,
        },
        "today": {
            "date": datetime.fromtimestamp(day, UTC).strftime("%Y-%m-%d"),
            "stored": stored,
            "counted_since": tally.since.strftime("%Y-%m-%dT%H:%MZ"),
            "accepted": tally.accepted,
            "refused": tally.refused,
        },
        "last_events": [
            {"hour": _hour(int(hour)), "app": app, "action": action, "country": country}
            for hour, app, action, country in last
        ],
        "hints": hints,
    }


def _rows(items: list[tuple[str, Any]]) -> str:
    return "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in items)


def render_page(report: dict[str, Any]) -> str:
    """The report as a plain page (no script, no style, no request of its own)."""
    wiring, today = report["wiring"], report["today"]
    events = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(e[k]))}</td>" for k in ("hour", "app", "action", "country")) + "</tr>"
        for e in report["last_events"]
    ) or '<tr><td colspan="4">none stored</td></tr>'
    refused = _rows(list(today["refused"].items())) or "<tr><td>none</td></tr>"
    hints = "".join(f"<li>{html.escape(h)}</li>" for h in report["hints"]) or "<li>Nothing to fix that the node can see.</li>"
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>Setup check</title></head><body>"
        f"<h1>Setup check of node {html.escape(report['node'])}</h1>"
        "<p>For the operator only: served on the metrics listener, never the public port. "
        "Nothing here leaves the node.</p>"
        f"<h2>Hints</h2><ul>{hints}</ul>"
        f"<h2>Today ({html.escape(today['date'])} UTC)</h2><table>"
        + _rows([("events stored today", today["stored"]),
                 (f"accepted since {today['counted_since']}", today["accepted"])])
        + f"</table><h3>Refused, by reason</h3><table>{refused}</table>"
        f"<h2>Last {LAST_EVENTS} events (as stored: hour, app, action, country)</h2>"
        f"<table><tr><th>hour</th><th>app</th><th>action</th><th>country</th></tr>{events}</table>"
        "<h2>Wiring</h2><table>"
        + _rows([("cors_origins", ", ".join(wiring["cors_origins"]) or "(none)"),
                 ("plausible.domains", wiring["plausible_domains"]), ("plausible.events", wiring["plausible_events"]),
                 ("umami.websites", wiring["umami_websites"]), ("umami.events", wiring["umami_events"]),
                 ("push.hub_url", wiring["push_hub_url"] or "(none: snapshots stay local)"),
                 ("catalog", report["catalog"])])
        + "</table></body></html>"
    )


def setup_routes(node: Node) -> list[web.RouteDef]:
    """`GET /setup` and `GET /setup.json`, for the operator's listener."""

    async def page(request: web.Request) -> web.Response:
        report = await asyncio.to_thread(setup_report, node, node.ingestor.today.read())
        return web.Response(text=render_page(report), content_type="text/html", charset="utf-8", headers=HEADERS)

    async def document(request: web.Request) -> web.Response:
        report = await asyncio.to_thread(setup_report, node, node.ingestor.today.read())
        return web.json_response(report, headers=HEADERS)

    return [web.get("/setup", page), web.get("/setup.json", document)]
