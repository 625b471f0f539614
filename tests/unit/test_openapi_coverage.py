"""The OpenAPI document cannot drift from the routes the API serves.

Every route of query_api's app, every method it answers, every path parameter and every
query parameter its endpoint declares (``@query``, the declaration the handler parses
with) must be in the document; the check is shown to fail on an app with more than the
document says, and a handler is shown unable to read a parameter it did not declare.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from adapters.settings import Settings
from query_api import openapi
from query_api.app import create_app
from query_api.openapi import OPERATIONS, coverage_gaps, document
from query_api.params import Integer, Query, declared, query
from query_api.routes_leads import PAGE

QUERY_API = Path(openapi.__file__).parent


def app_routes() -> list[BaseRoute]:
    return openapi.api_routes(create_app(Settings()).routes)


def test_the_console_is_served_but_not_part_of_the_document() -> None:
    everything = list(create_app(Settings()).routes)
    assert len(everything) > len(app_routes())
    assert not any(p.startswith("/console") for p in document(everything)["paths"])
    assert coverage_gaps(everything, document(everything)) == []


def test_every_route_method_and_parameter_of_the_app_is_documented() -> None:
    routes = app_routes()
    assert len(routes) >= 18
    assert coverage_gaps(routes, document(routes)) == []


def test_every_hand_written_operation_has_a_route() -> None:
    paths = document(app_routes())["paths"]
    written = {(path, method) for path, item in OPERATIONS.items() for method in item}
    served = {(path, method) for path, item in paths.items() for method in item}
    assert written == served


def test_the_document_lists_each_routes_declared_query_parameters_in_order() -> None:
    routes = app_routes()
    paths = document(routes)["paths"]
    checked = 0
    for route in routes:
        assert isinstance(route, Route)
        params = declared(route.endpoint)
        method = next(m for m in sorted(route.methods or ()) if m != "HEAD").lower()
        operation = paths[route.path][method]
        documented = [p for p in operation.get("parameters", []) if p["in"] == "query"]
        assert [p["name"] for p in documented] == [p.name for p in params], route.path
        assert documented == [p.openapi() for p in params]
        checked += len(params)
    assert checked >= 12  # limit, cursor, filters, bucket, band, window_hours, ...


def test_the_check_reports_an_undocumented_route_method_and_parameters() -> None:
    extra = Integer("days", "Days back.", 7, 1, 30)

    @query(extra)
    async def undocumented(request: Request, q: Query) -> Response:
        return Response(str(q[extra]))

    routes = [
        *app_routes(),
        Route("/leads/{id}/notes", undocumented, methods=["GET"]),
        Route("/models", undocumented, methods=["POST"]),
    ]
    gaps = coverage_gaps(routes, document(routes))
    assert gaps == [
        "/leads/{id}/notes: route not in the document",
        "POST /models: method not in the document",
    ]


def test_the_check_reports_parameters_missing_from_a_document() -> None:
    routes = app_routes()
    doc = json.loads(json.dumps(document(routes)))  # a copy to take things out of
    op = doc["paths"]["/leads/{id}/scores"]["get"]
    op["parameters"] = [p for p in op["parameters"] if p["name"] not in ("id", "limit")]
    doc["paths"]["/ghost"] = {"get": {}}
    assert coverage_gaps(routes, doc) == [
        "GET /leads/{id}/scores: path parameter 'id' missing",
        "GET /leads/{id}/scores: query parameter 'limit' missing",
        "GET /ghost: documented but no route serves it",
    ]


def _request(query_string: bytes) -> Request:
    return Request(
        {
            "type": "http",
            "method": "GET",
            "path": "/x",
            "query_string": query_string,
            "headers": [],
            "path_params": {},
        }
    )


def test_a_handler_reads_only_what_its_route_declared() -> None:
    own = Integer("n", "A number.", 3, 1, 10)

    @query(own)
    async def reads_its_own(request: Request, q: Query) -> Response:
        return Response(str(q[own]))

    @query(own)
    async def reads_another(request: Request, q: Query) -> Response:
        return Response(str(q[PAGE]))

    assert asyncio.run(reads_its_own(_request(b"n=7"))).body == b"7"
    assert asyncio.run(reads_its_own(_request(b""))).body == b"3"
    with pytest.raises(LookupError, match="'limit' is not declared"):
        asyncio.run(reads_another(_request(b"limit=5")))


def test_a_route_cannot_declare_one_name_twice() -> None:
    with pytest.raises(ValueError, match="declared twice"):
        query(Integer("n", "", 1, 1, 2), Integer("n", "", 1, 1, 2))


def test_no_route_module_reads_the_query_string_around_the_declarations() -> None:
    # Only query_api/params.py parses query parameters; a route reading
    # request.query_params (or a Params of its own) would escape the document.
    offenders = []
    for path in sorted(QUERY_API.glob("*.py")):
        if path.name == "params.py":
            continue
        text = path.read_text()
        if "query_params" in text or re.search(r"\bParams\(", text):
            offenders.append(path.name)
    assert offenders == []
