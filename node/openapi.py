"""The node's OpenAPI 3.1 description; a test checks it against the app's routes."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from protocol.events import (
    MAX_ATTRIBUTE_STRING,
    MAX_ATTRIBUTES,
    MAX_BATCH,
    SLUG_PATTERN,
)
from views.paths import JSON_OK, PROBLEM, PROBLEM_RESPONSE, shared_paths

MSGPACK = {"schema": {"type": "string", "format": "binary"}}
SLUG = {"type": "string", "pattern": SLUG_PATTERN}

EVENT: dict[str, Any] = {
    "type": "object",
    "description": "One tool event, before the privacy filter. Undeclared apps and actions are refused (422), "
    "undeclared attributes dropped, numbers bucketed, unknown categories stored as `other`.",
    "additionalProperties": False,
    "required": ["app", "action", "timestamp", "session_id"],
    "properties": {
        "app": SLUG,
        "action": SLUG,
        "attributes": {
            "type": "object",
            "maxProperties": MAX_ATTRIBUTES,
            "propertyNames": {"pattern": SLUG_PATTERN},
            "additionalProperties": {
                "anyOf": [
                    {"type": "string", "maxLength": MAX_ATTRIBUTE_STRING},
                    {"type": "number"},
                    {"type": "boolean"},
                ]
            },
        },
        "timestamp": {
            "type": "string",
            "format": "date-time",
            "description": "RFC 3339 with an offset; live events further than the clock skew from the server clock are refused",
        },
        "geo_hint": {
            "type": ["string", "null"],
            "maxLength": 64,
            "description": "ISO 3166-1 alpha-2; anything else falls back to the client IP's country",
        },
        "session_id": {
            "type": "string",
            "pattern": "^[\\x21-\\x7e]{8,128}$",
            "description": "hashed under the day's salt on arrival; never stored",
        },
    },
}
EVENTS_BODY: dict[str, Any] = {
    "oneOf": [
        {"$ref": "#/components/schemas/Event"},
        {"type": "array", "minItems": 1, "maxItems": MAX_BATCH, "items": {"$ref": "#/components/schemas/Event"}},
        {"type": "object", "additionalProperties": False, "required": ["events"], "properties": {
            "events": {"type": "array", "minItems": 1, "maxItems": MAX_BATCH,
                       "items": {"$ref": "#/components/schemas/Event"}}}},
    ]
}
PLAUSIBLE_BODY: dict[str, Any] = {
    "type": "object",
    "description": "Plausible's Events API body (short or long names); `d` picks the app, `n` the action",
    "properties": {
        "n": {"type": "string"}, "name": {"type": "string"},
        "u": {"type": "string"}, "url": {"type": "string"},
        "d": {"type": "string"}, "domain": {"type": "string"},
        "r": {"type": ["string", "null"]}, "referrer": {"type": ["string", "null"]},
        "p": {"type": ["object", "string"]}, "props": {"type": ["object", "string"]},
    },
}
UMAMI_BODY: dict[str, Any] = {
    "type": "object",
    "description": "What Umami's tracker sends; `payload.website` picks the app, `payload.name` the action "
                   "(none: `pageview`), `payload.data` the attributes. Other payload fields are read by nobody.",
    "required": ["type", "payload"],
    "properties": {
        "type": {"enum": ["event", "identify", "performance", "engagement"]},
        "payload": {"type": "object", "required": ["website"], "properties": {
            "website": {"type": "string"}, "name": {"type": "string"}, "data": {"type": "object"},
            "hostname": {"type": "string"}, "url": {"type": "string"},
        }},
    },
}
PREFLIGHT = {
    "summary": "CORS preflight (answered for the configured origins)",
    "responses": {"204": {"description": "allowed"}, "403": PROBLEM},
}
WINDOW = {"name": "window", "in": "path", "required": True,
          "description": "2026-11-23, 2026-W48 (an ISO week) or unix seconds: the start of a window",
          "schema": {"type": "string"}}


def _envelope_of_window(summary: str) -> dict[str, Any]:
    """A GET of one window's committed envelope (node/read_routes.py)."""
    return {
        "get": {
            "summary": summary,
            "parameters": [WINDOW],
            "responses": {
                "200": {"description": "the envelope", "content": {"application/msgpack": MSGPACK}},
                "400": PROBLEM,
                "404": PROBLEM,
            },
        }
    }


def openapi_document() -> dict[str, Any]:
    """The whole document."""
    events_content = {
        "application/json": {"schema": EVENTS_BODY},
        "text/plain": {"schema": {"type": "string", "description": "JSON sent by navigator.sendBeacon"}},
        "application/msgpack": {"schema": EVENTS_BODY},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Liberation Analytics community node",
            "version": "1",
            "description": "Takes events from a community's tools, keeps only what the catalog declares, and "
            "publishes noised, thresholded, signed snapshots. No raw event ever leaves the node.",
        },
        "paths": {
            "/v1/events": {
                "post": {
                    "summary": 'Ingest one event, an array, or {"events": [...]}; all-or-nothing unless ?partial=1',
                    "parameters": [
                        {
                            "name": "partial",
                            "in": "query",
                            "required": False,
                            "description": "1 or true: accept the valid events and report each one",
                            "schema": {"type": "string", "enum": ["1", "true", "0", "false"]},
                        }
                    ],
                    "requestBody": {"required": True, "content": events_content},
                    "responses": {
                        "202": {"description": "committed (acknowledged only once durable)", "content": JSON_OK["content"]},
                        **{str(c): PROBLEM for c in (400, 403, 408, 413, 415, 422, 429, 503)},
                    },
                },
                "options": PREFLIGHT,
            },
            "/api/event": {
                "post": {
                    "summary": "Plausible's Events API: sites running Plausible's tracker can point it here",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": PLAUSIBLE_BODY}, "text/plain": {"schema": {"type": "string"}}},
                    },
                    "responses": {
                        "202": {
                            "description": "ok (x-plausible-dropped: 1 when the event was dropped)",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **{str(c): PROBLEM for c in (400, 403, 408, 413, 429, 503)},
                    },
                },
                "options": PREFLIGHT,
            },
            "/api/send": {
                "post": {
                    "summary": "Umami's collect endpoint: sites running Umami's tracker can point it here",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": UMAMI_BODY}}},
                    "responses": {
                        "202": {"description": '{"accepted": 1, ...}, or {"accepted": 0, "dropped": REASON}',
                                "content": {"application/json": {"schema": {"type": "object"}}}},
                        **{str(c): PROBLEM for c in (400, 403, 408, 413, 429, 503)},
                    },
                },
                "options": PREFLIGHT,
            },
            "/v1/snapshots": {"get": {"summary": "The node's published snapshots", "responses": {"200": JSON_OK}}},
            "/v1/snapshots/{window}": _envelope_of_window(
                "One published snapshot: the signed envelope, exactly as pushed to the hub"
            ),
            "/v1/contributions": {
                "get": {"summary": "The node's contributions to federation rounds", "responses": {"200": JSON_OK}}
            },
            "/v1/contributions/{window}": _envelope_of_window(
                "One contribution: masked counts and seeds sealed to the keepers, exactly as pushed"
            ),
            "/v1/ledger": {
                "get": {"summary": "The privacy ledger: epsilon spent per window and metric", "responses": {"200": JSON_OK}}
            },
            "/v1/local/summary": {
                "get": {"summary": "The node's own published view (noised, thresholded)", "responses": {"200": JSON_OK}}
            },
            "/js/liberation.js": {
                "get": {
                    "summary": "The client script (no cookies, honours GPC and DNT)",
                    "responses": {
                        "200": {
                            "description": "the script",
                            "content": {"application/javascript": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            **shared_paths(),
            "/healthz": {"get": {"summary": "Health", "responses": {"200": JSON_OK}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": JSON_OK}}},
        },
        "components": {
            "schemas": {"Event": EVENT},
            "responses": {
                "Problem": PROBLEM_RESPONSE
            },
        },
    }


async def serve_openapi(request: web.Request) -> web.Response:
    """`GET /openapi.json`."""
    return web.json_response(openapi_document(), headers={"Cache-Control": "public, max-age=3600"})
