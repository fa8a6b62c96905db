"""The node's OpenAPI document: it describes exactly the routes the app serves, and its GETs answer."""

from __future__ import annotations

import json

import aiohttp

from node.openapi import openapi_document
from protocol.errors import PROBLEM_CONTENT_TYPE
from tests.servers import RunningNode


async def test_openapi_matches_the_routes(node: RunningNode) -> None:
    async with aiohttp.ClientSession() as session, session.get(node.url + "/openapi.json") as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        doc = json.loads(await resp.read())
    assert doc == json.loads(json.dumps(openapi_document()))
    assert doc["openapi"].startswith("3.1")
    documented = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    routed = {
        (route.method, route.resource.canonical)
        for route in node.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert documented == routed
    async with aiohttp.ClientSession() as session:
        for method, path in sorted(documented):
            if method == "GET" and "{" not in path:
                async with session.get(node.url + path) as resp:
                    assert resp.status == 200, path
                    documented_types = set(doc["paths"][path]["get"]["responses"]["200"]["content"])
                    assert resp.content_type in documented_types, path


async def test_documented_problems_have_the_problem_shape(node: RunningNode) -> None:
    doc = openapi_document()
    problem = doc["components"]["responses"]["Problem"]["content"][PROBLEM_CONTENT_TYPE]["schema"]
    async with aiohttp.ClientSession() as session:
        async with session.post(node.url + "/v1/events", data=b"{", headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 400 and resp.content_type == PROBLEM_CONTENT_TYPE
            body = await resp.json(content_type=None)
        async with session.get(node.url + "/v1/snapshots/yesterday") as resp:
            assert resp.status == 400 and resp.content_type == PROBLEM_CONTENT_TYPE
    assert set(problem["required"]) <= set(body)
    for operation in (op for item in doc["paths"].values() for op in item.values()):
        for status, response in operation["responses"].items():
            assert (response == {"$ref": "#/components/responses/Problem"}) == (status[0] in "45"), status
