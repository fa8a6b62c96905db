"""The hub's OpenAPI 3.1 description; a test checks it against the app's routes."""

from __future__ import annotations

from typing import Any

from federation.views import VIEWS

PROBLEM = {"$ref": "#/components/responses/Problem"}
JSON_OK = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}


def _query(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": {"type": "string", **schema}}


def _path(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", **schema}}


CATALOG_PARAM = _query("catalog", "catalog hash (default: the hub's default catalog)", pattern="^[0-9a-f]{64}$")
RANGE = [
    _query("from", "first day, inclusive (default: 29 days before `to`); a weekly catalog's range starts "
           "on that day's ISO week's Monday", format="date"),
    _query("to", "last day, inclusive (default: the latest window with data); a weekly catalog's range ends "
           "on that day's ISO week's Sunday", format="date"),
    CATALOG_PARAM,
]
ADMIN: list[dict[str, list[str]]] = [{"bearer": []}]


def openapi_document() -> dict[str, Any]:
    """The whole document."""
    errors = {str(code): PROBLEM for code in (400, 404)}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Liberation Analytics federation hub",
            "version": "1",
            "description": "Merged, noised, thresholded movement views. Every number comes with its noise sd "
            "and the number of nodes behind it. Only signed snapshots come in; no event ever does.",
        },
        "paths": {
            "/v1/snapshots": {"post": {
                "summary": "Submit a signed snapshot envelope (nodes, or child hubs)",
                "requestBody": {"required": True, "content": {"application/msgpack": {"schema": {"type": "string", "format": "binary"}}}},
                "responses": {
                    "202": {"description": "verified, merged and logged", **{"content": JSON_OK["content"]}},
                    "200": {"description": "a replay of an accepted snapshot (idempotent)", "content": JSON_OK["content"]},
                    **{str(c): PROBLEM for c in (400, 403, 409, 413, 415, 422, 503)},
                },
            }},
            "/v1/snapshots/{key_id}/{window}": {"get": {
                "summary": "A stored envelope exactly as accepted, by node key id and window (public, as snapshots are)",
                "parameters": [_path("key_id", "the node's key id", pattern="^[0-9a-f]{32}$"),
                               _path("window", "2026-11-23, 2026-W48 (an ISO week) or unix seconds")],
                "responses": {"200": {"description": "the envelope", "content": {"application/msgpack": {"schema": {"type": "string", "format": "binary"}}}},
                              **errors},
            }},
            "/v1/merged/{window}": {"get": {
                "summary": "One window's merged cells before re-thresholding (for audits)",
                "parameters": [_path("window", "2026-11-23, 2026-W48 (an ISO week) or unix seconds"), CATALOG_PARAM],
                "responses": {"200": JSON_OK, **errors},
            }},
            "/v1/export": {"get": {
                "summary": "A final window merged and signed by this hub (hub of hubs)",
                "parameters": [_query("window", "2026-11-23"), CATALOG_PARAM],
                "responses": {"200": {"description": "the envelope", "content": {"application/msgpack": {"schema": {"type": "string", "format": "binary"}}}},
                              "409": PROBLEM, **errors},
            }},
            **shared_paths(),
            "/v1/log": {"get": {
                "summary": "The hash-chained transparency log of accepted snapshots",
                "parameters": [_query("after", "entries after this sequence number", pattern="^[0-9]+$"),
                               _query("limit", "at most this many (<= 10000)", pattern="^[0-9]+$")],
                "responses": {"200": JSON_OK, "400": PROBLEM},
            }},
            "/v1/admin/nodes": {
                "get": {"summary": "Enrolled nodes", "security": ADMIN, "responses": {"200": JSON_OK, "401": PROBLEM, "404": PROBLEM}},
                "post": {"summary": "Enroll a node's public key", "security": ADMIN,
                         "requestBody": {"required": True, "content": {"application/json": {"schema": {
                             "type": "object", "required": ["name", "public_key"],
                             "properties": {"name": {"type": "string"}, "public_key": {"type": "string", "description": "base64 or PEM"},
                                            "kind": {"type": "string", "enum": ["node", "hub"], "default": "node",
                                                     "description": "hub: a child hub whose merged snapshots this hub merges"}}}}}},
                         "responses": {"201": JSON_OK, "200": {**JSON_OK, "description": "the same key and name again, with the other kind: its kind changed"},
                                       **{str(c): PROBLEM for c in (400, 401, 404, 409, 422)}}},
            },
            "/v1/admin/nodes/{node}": {"delete": {"summary": "Revoke a node (by key id or name)", "security": ADMIN,
                                                  "parameters": [_path("node", "key id or name")],
                                                  "responses": {"200": JSON_OK, "401": PROBLEM, "404": PROBLEM}}},
            "/v1/admin/incidents": {"get": {"summary": "Equivocation incidents", "security": ADMIN,
                                            "responses": {"200": JSON_OK, "401": PROBLEM, "404": PROBLEM}}},
            "/healthz": {"get": {"summary": "Health", "responses": {"200": JSON_OK}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": JSON_OK}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Problem": {"description": "RFC 9457 problem details", "content": {"application/problem+json": {"schema": {
                "type": "object", "required": ["type", "title", "status", "detail"],
                "properties": {"type": {"type": "string", "format": "uri"}, "title": {"type": "string"},
                               "status": {"type": "integer"}, "detail": {"type": "string"}}}}}}},
        },
    }


def shared_paths() -> dict[str, Any]:
    """The paths hub and node serve alike: views over published data, the catalog, the dashboard."""
    errors = {str(code): PROBLEM for code in (400, 404)}
    return {
        "/v1/views": {"get": {"summary": "The list of views", "responses": {"200": JSON_OK}}},
        "/v1/views/{name}": {"get": {
                "summary": "One insight over a date range",
                "parameters": [
                    _path("name", "the view", enum=list(VIEWS)),
                    *RANGE,
                    _query("format", "json (default) or csv; Accept: text/csv works too", enum=["json", "csv"]),
                ],
                "responses": {
                    "200": {"description": "the view", "headers": {"ETag": {"schema": {"type": "string"}}},
                            "content": {"application/json": {"schema": {"type": "object"}},
                                        "text/csv": {"schema": {"type": "string"}}}},
                    "304": {"description": "not modified (If-None-Match)"},
                    **errors,
                },
            }},
        "/v1/windows": {"get": {"summary": "Windows with data and their node counts",
                                    "parameters": [CATALOG_PARAM], "responses": {"200": JSON_OK, **errors}}},
        "/v1/catalog": {"get": {"summary": "What is collected and published: apps, attributes, domains, epsilon, thresholds",
                                    "parameters": [CATALOG_PARAM], "responses": {"200": JSON_OK, **errors}}},
        "/": {"get": {"summary": "The dashboard (HTML)", "responses": {"200": {"description": "the page", "content": {"text/html": {"schema": {"type": "string"}}}}}}},
        "/static/{path}": {"get": {"summary": "Dashboard assets", "parameters": [_path("path", "an asset of the dashboard")],
                                       "responses": {"200": {"description": "the asset"}, "304": {"description": "not modified"}, "404": PROBLEM}}},
    }
