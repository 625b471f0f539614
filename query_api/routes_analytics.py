"""Analytics from the ClickHouse read model (projections/analytics.py), per org."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from query_api.auth import org_of
from query_api.params import Integer, Query, query
from query_api.responses import JSON
from query_api.routes_leads import resources

DEFAULT_BUCKET = 10
DEFAULT_BAND = 20
BUCKET = Integer("bucket", "Bucket width in points.", DEFAULT_BUCKET, 1, 100)
BAND = Integer("band", "Band width in points.", DEFAULT_BAND, 1, 100)


@query(BUCKET)
async def score_distribution(request: Request, q: Query) -> Response:
    bucket = q[BUCKET]
    org = org_of(request)
    return JSON(
        await resources(request).analytics(
            ("distribution", org, bucket), lambda a: a.score_distribution(org, bucket)
        )
    )


@query()
async def funnel(request: Request, q: Query) -> Response:
    org = org_of(request)
    steps = await resources(request).analytics(("funnel", org), lambda a: a.funnel(org))
    return JSON({"org_id": org, "items": steps})


@query()
async def conversion_by_source(request: Request, q: Query) -> Response:
    org = org_of(request)
    rows = await resources(request).analytics(
        ("by_source", org), lambda a: a.conversion_by_source(org)
    )
    return JSON({"org_id": org, "items": rows})


@query(BAND)
async def conversion_by_score_band(request: Request, q: Query) -> Response:
    band = q[BAND]
    org = org_of(request)
    rows = await resources(request).analytics(
        ("by_band", org, band), lambda a: a.conversion_by_score_band(org, band)
    )
    return JSON({"org_id": org, "band": band, "items": rows})


@query()
async def model_comparison(request: Request, q: Query) -> Response:
    org = org_of(request)
    rows = await resources(request).analytics(("models", org), lambda a: a.model_comparison(org))
    return JSON({"org_id": org, "items": rows})


routes = [
    Route("/analytics/score-distribution", score_distribution, methods=["GET"]),
    Route("/analytics/funnel", funnel, methods=["GET"]),
    Route("/analytics/conversion-by-source", conversion_by_source, methods=["GET"]),
    Route("/analytics/conversion-by-score-band", conversion_by_score_band, methods=["GET"]),
    Route("/analytics/models", model_comparison, methods=["GET"]),
]
