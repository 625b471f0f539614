"""Analytics from the ClickHouse read model (projections/analytics.py), per org.

``from`` and ``until`` select the cohort of leads created in that range (see
projections/analytics.py for why by creation time); both are optional.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from projections.analytics import EARLIEST, LATEST, Cohort
from query_api.auth import org_of
from query_api.params import Instant, Integer, Query, Range, query
from query_api.responses import JSON
from query_api.routes_leads import resources

DEFAULT_BUCKET = 10
DEFAULT_BAND = 20
BUCKET = Integer("bucket", "Bucket width in points.", DEFAULT_BUCKET, 1, 100)
BAND = Integer("band", "Band width in points.", DEFAULT_BAND, 1, 100)
SINCE = Instant("from", "Only leads created at or after this instant (RFC 3339, with an offset).")
UNTIL = Instant(
    "until",
    "Only leads created before this instant (RFC 3339, with an offset; may be ahead).",
    future=True,
)
CREATED = Range(SINCE, UNTIL)


def cohort(q: Query) -> Cohort | None:
    """The range the request asked for, or None for every lead."""
    since, until = q[SINCE], q[UNTIL]
    if since is None and until is None:
        return None
    return Cohort(since or EARLIEST, until or LATEST)


@query(BUCKET, SINCE, UNTIL, ranges=(CREATED,))
async def score_distribution(request: Request, q: Query) -> Response:
    bucket, org, c = q[BUCKET], org_of(request), cohort(q)
    return JSON(
        await resources(request).analytics(
            ("distribution", org, bucket, c), lambda a: a.score_distribution(org, bucket, c)
        )
    )


@query(SINCE, UNTIL, ranges=(CREATED,))
async def funnel(request: Request, q: Query) -> Response:
    org, c = org_of(request), cohort(q)
    steps = await resources(request).analytics(("funnel", org, c), lambda a: a.funnel(org, c))
    return JSON({"org_id": org, "items": steps})


@query(SINCE, UNTIL, ranges=(CREATED,))
async def conversion_by_source(request: Request, q: Query) -> Response:
    org, c = org_of(request), cohort(q)
    rows = await resources(request).analytics(
        ("by_source", org, c), lambda a: a.conversion_by_source(org, c)
    )
    return JSON({"org_id": org, "items": rows})


@query(BAND, SINCE, UNTIL, ranges=(CREATED,))
async def conversion_by_score_band(request: Request, q: Query) -> Response:
    band, org, c = q[BAND], org_of(request), cohort(q)
    rows = await resources(request).analytics(
        ("by_band", org, band, c), lambda a: a.conversion_by_score_band(org, band, c)
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
