"""Leads, their score history, filtered listings and the leaderboard."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from query_api import cursor, reads
from query_api.auth import org_of
from query_api.errors import NotFoundError
from query_api.params import Params
from query_api.resources import Resources
from query_api.responses import JSON, Encoded, dumps

GRADES = frozenset(f"{letter}{digit}" for letter in "ABC" for digit in "123")
MAX_PAGE = 500
DEFAULT_PAGE = 50
MAX_LEADERBOARD = 1000
DEFAULT_LEADERBOARD = 10
MAX_SOURCE_LENGTH = 128


def resources(request: Request) -> Resources:
    res: Resources = request.app.state.resources
    return res


async def get_lead(request: Request) -> Response:
    # Cache hits never get here (query_api/hotpath.py); this computes and fills.
    p = Params(request)
    lead_id = p.lead_id()
    p.check()
    if lead_id is None:
        raise NotFoundError("lead not found")
    res, org = resources(request), org_of(request)
    ticket = res.hot.epoch
    found = await reads.lead(res.pool, res.redis, res.keys, org, lead_id)
    if found is None:
        # Another org's lead answers exactly like a missing one.
        raise NotFoundError("lead not found")
    body = dumps(found)
    res.hot.put_lead(org, lead_id, body, ticket)
    return Encoded(body)


async def get_lead_scores(request: Request) -> Response:
    p = Params(request)
    lead_id = p.lead_id()
    before = p.cursor("cursor", lambda c: cursor.decode_position("history", c))
    limit = p.integer("limit", DEFAULT_PAGE, 1, MAX_PAGE)
    p.check()
    page = None
    if lead_id is not None:
        page = await reads.score_history(
            resources(request).pool, org_of(request), lead_id, before, limit
        )
    if page is None:
        raise NotFoundError("lead not found")
    return JSON(page)


async def list_leads(request: Request) -> Response:
    p = Params(request)
    min_score = p.number("min_score", 0, 100)
    grade = p.choice("grade", GRADES)
    source = p.text("source", MAX_SOURCE_LENGTH)
    after = p.cursor("cursor", cursor.decode_score_key)
    limit = p.integer("limit", DEFAULT_PAGE, 1, MAX_PAGE)
    p.check()
    if source is not None and "\x00" in source:
        # PostgreSQL text cannot hold NUL, so no lead has this source.
        return JSON({"items": [], "next_cursor": None})
    page = await reads.leads(
        resources(request).pool,
        org_of(request),
        min_score=min_score,
        grade=grade,
        source=source,
        after=after,
        limit=limit,
    )
    return JSON(page)


async def leaderboard(request: Request) -> Response:
    # Cache hits never get here (query_api/hotpath.py); this computes and fills.
    p = Params(request)
    limit = p.integer("limit", DEFAULT_LEADERBOARD, 1, MAX_LEADERBOARD)
    p.check()
    res, org = resources(request), org_of(request)
    ticket = res.hot.epoch
    body = dumps(await res.leaderboard.top(org, limit))
    # Keyed by the raw query string: the same bytes parse to the same (valid) parameters.
    res.hot.put_board(org, request.scope["query_string"], body, ticket)
    return Encoded(body)


LEAD = Route("/leads/{id}", get_lead, methods=["GET"])
LEADERBOARD = Route("/leaderboard", leaderboard, methods=["GET"])
routes = [
    LEAD,
    LEADERBOARD,
    Route("/leads", list_leads, methods=["GET"]),
    Route("/leads/{id}/scores", get_lead_scores, methods=["GET"]),
]
