"""The hub's OpenAPI 3.1 description; a test checks it against the app's routes."""

from __future__ import annotations

from typing import Any

from views.paths import (
    CATALOG_PARAM,
    JSON_OK,
    PROBLEM,
    PROBLEM_RESPONSE,
    path_param,
    query_param,
    shared_paths,
)

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
            "/v1/snapshots": {
                "post": {
                    "summary": "Submit a signed snapshot envelope (nodes, or child hubs)",
                    "requestBody": {
                        "required": True,
                        "content": {"application/msgpack": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    "responses": {
                        "202": {"description": "verified, merged and logged", **{"content": JSON_OK["content"]}},
                        "200": {"description": "a replay of an accepted snapshot (idempotent)", "content": JSON_OK["content"]},
                        **{str(c): PROBLEM for c in (400, 403, 409, 413, 415, 422, 503)},
                    },
                }
            },
            "/v1/snapshots/{key_id}/{window}": {
                "get": {
                    "summary": "A stored envelope exactly as accepted, by node key id and window (public, as snapshots are)",
                    "parameters": [
                        path_param("key_id", "the node's key id", pattern="^[0-9a-f]{32}$"),
                        path_param("window", "2026-11-23, 2026-W48 (an ISO week) or unix seconds"),
                    ],
                    "responses": {
                        "200": {
                            "description": "the envelope",
                            "content": {"application/msgpack": {"schema": {"type": "string", "format": "binary"}}},
                        },
                        **errors,
                    },
                }
            },
            "/v1/contributions": {
                "post": {
                    "summary": "Submit a node's signed contribution to a federation round (docs/protocol.md section 13)",
                    "requestBody": {
                        "required": True,
                        "content": {"application/msgpack": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    "responses": {
                        "202": {"description": "verified, stored and logged", "content": JSON_OK["content"]},
                        "200": {"description": "a replay of an accepted contribution", "content": JSON_OK["content"]},
                        **{str(c): PROBLEM for c in (400, 403, 409, 413, 415, 422)},
                    },
                }
            },
            "/v1/keepers": {
                "get": {
                    "summary": "The active share keepers: identity and signed sealing key, for nodes to seal to",
                    "responses": {"200": JSON_OK},
                }
            },
            "/v1/rounds": {"get": {"summary": "Federation rounds and their states", "responses": {"200": JSON_OK}}},
            "/v1/rounds/{window}": {
                "get": {
                    "summary": "One round with every signed part (contributions, keeper answers) and its aggregate",
                    "parameters": [path_param("window", "2026-11-23, 2026-11-23T05 or unix seconds"), CATALOG_PARAM],
                    "responses": {"200": JSON_OK, **errors},
                }
            },
            "/v1/merged/{window}": {
                "get": {
                    "summary": "One window's merged cells before re-thresholding (for audits)",
                    "parameters": [path_param("window", "2026-11-23, 2026-W48 (an ISO week) or unix seconds"), CATALOG_PARAM],
                    "responses": {"200": JSON_OK, **errors},
                }
            },
            "/v1/export": {
                "get": {
                    "summary": "A final window merged and signed by this hub (hub of hubs)",
                    "parameters": [query_param("window", "2026-11-23"), CATALOG_PARAM],
                    "responses": {
                        "200": {
                            "description": "the envelope",
                            "content": {"application/msgpack": {"schema": {"type": "string", "format": "binary"}}},
                        },
                        "409": PROBLEM,
                        **errors,
                    },
                }
            },
            **shared_paths(),
            "/v1/log": {
                "get": {
                    "summary": "The hash-chained transparency log of snapshots, contributions, keeper answers and rounds",
                    "parameters": [
                        query_param("after", "entries after this sequence number", pattern="^[0-9]+$"),
                        query_param("limit", "at most this many (<= 10000)", pattern="^[0-9]+$"),
                    ],
                    "responses": {"200": JSON_OK, "400": PROBLEM},
                }
            },
            "/v1/admin/nodes": {
                "get": {
                    "summary": "Enrolled nodes",
                    "security": ADMIN,
                    "responses": {"200": JSON_OK, "401": PROBLEM, "404": PROBLEM},
                },
                "post": {
                    "summary": "Enroll a node's public key",
                    "security": ADMIN,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["name", "public_key"],
                                    "properties": {
                                        "name": {"type": "string"},
                                        "public_key": {"type": "string", "description": "base64 or PEM"},
                                        "kind": {
                                            "type": "string",
                                            "enum": ["node", "hub", "keeper"],
                                            "default": "node",
                                            "description": "hub: a child hub whose merged snapshots this hub merges; "
                                            "keeper: a share keeper of federation rounds",
                                        },
                                        "url": {"type": "string", "description": "a keeper's base URL (kind keeper only)"},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "201": JSON_OK,
                        "200": {**JSON_OK, "description": "the same key and name again, with the other kind: its kind changed"},
                        **{str(c): PROBLEM for c in (400, 401, 404, 409, 422)},
                    },
                },
            },
            "/v1/admin/nodes/{node}": {
                "delete": {
                    "summary": "Revoke a node (by key id or name)",
                    "security": ADMIN,
                    "parameters": [path_param("node", "key id or name")],
                    "responses": {"200": JSON_OK, "401": PROBLEM, "404": PROBLEM},
                }
            },
            "/v1/admin/incidents": {
                "get": {
                    "summary": "Equivocation incidents",
                    "security": ADMIN,
                    "responses": {"200": JSON_OK, "401": PROBLEM, "404": PROBLEM},
                }
            },
            "/healthz": {"get": {"summary": "Health", "responses": {"200": JSON_OK}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": JSON_OK}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Problem": PROBLEM_RESPONSE
            },
        },
    }
