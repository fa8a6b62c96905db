"""OpenAPI pieces node and hub describe alike: the public views, the catalog, the dashboard."""

from __future__ import annotations

from typing import Any

from views.ranges import VIEWS

PROBLEM = {"$ref": "#/components/responses/Problem"}
PROBLEM_RESPONSE: dict[str, Any] = {
    "description": "RFC 9457 problem details",
    "content": {
        "application/problem+json": {
            "schema": {
                "type": "object",
                "required": ["type", "title", "status", "detail"],
                "properties": {
                    "type": {"type": "string", "format": "uri"},
                    "title": {"type": "string"},
                    "status": {"type": "integer"},
                    "detail": {"type": "string"},
                },
            }
        }
    },
}
"""The one error response every operation of node and hub may give (components/responses/Problem)."""
JSON_OK = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}


def query_param(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": {"type": "string", **schema}}


def path_param(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", **schema}}


CATALOG_PARAM = query_param("catalog", "catalog hash (default: the hub's default catalog)", pattern="^[0-9a-f]{64}$")
RANGE = [
    query_param("from", "first day, inclusive (default: 29 days before `to`); a weekly catalog's range starts "
                "on that day's ISO week's Monday", format="date"),
    query_param("to", "last day, inclusive (default: the latest window with data); a weekly catalog's range ends "
                "on that day's ISO week's Sunday", format="date"),
    CATALOG_PARAM,
]


def shared_paths() -> dict[str, Any]:
    """The paths hub and node serve alike: views over published data, the catalog, the dashboard."""
    errors = {str(code): PROBLEM for code in (400, 404)}
    return {
        "/v1/views": {"get": {"summary": "The list of views", "responses": {"200": JSON_OK}}},
        "/v1/views/{name}": {
            "get": {
                "summary": "One insight over a date range",
                "parameters": [
                    path_param("name", "the view", enum=list(VIEWS)),
                    *RANGE,
                    query_param("format", "json (default) or csv; Accept: text/csv works too", enum=["json", "csv"]),
                ],
                "responses": {
                    "200": {
                        "description": "the view",
                        "headers": {"ETag": {"schema": {"type": "string"}}},
                        "content": {
                            "application/json": {"schema": {"type": "object"}},
                            "text/csv": {"schema": {"type": "string"}},
                        },
                    },
                    "304": {"description": "not modified (If-None-Match)"},
                    **errors,
                },
            }
        },
        "/v1/about": {
            "get": {
                "summary": "Who serves this page: {kind: hub|node, key_id}; a node adds its name and communities: 1",
                "responses": {"200": JSON_OK},
            }
        },
        "/v1/cells": {
            "get": {
                "summary": "The shown cells of every window of a range as a tidy CSV: window,metric,<dimensions>,value,sd,nodes",
                "parameters": [*RANGE, query_param("metric", "metric names, comma-separated (default: all)")],
                "responses": {
                    "200": {
                        "description": "one row per window and shown cell; absent cells have no row (not zero)",
                        "headers": {"ETag": {"schema": {"type": "string"}}},
                        "content": {"text/csv": {"schema": {"type": "string"}}},
                    },
                    "304": {"description": "not modified (If-None-Match)"},
                    **errors,
                },
            }
        },
        "/v1/windows": {
            "get": {
                "summary": "Windows with data and their node counts",
                "parameters": [CATALOG_PARAM],
                "responses": {"200": JSON_OK, **errors},
            }
        },
        "/v1/catalog": {
            "get": {
                "summary": "What is collected and published: apps, attributes, domains, epsilon, thresholds",
                "parameters": [CATALOG_PARAM],
                "responses": {"200": JSON_OK, **errors},
            }
        },
        "/": {
            "get": {
                "summary": "The dashboard (HTML)",
                "responses": {"200": {"description": "the page", "content": {"text/html": {"schema": {"type": "string"}}}}},
            }
        },
        "/static/{path}": {
            "get": {
                "summary": "Dashboard assets",
                "parameters": [path_param("path", "an asset of the dashboard")],
                "responses": {"200": {"description": "the asset"}, "304": {"description": "not modified"}, "404": PROBLEM},
            }
        },
    }
