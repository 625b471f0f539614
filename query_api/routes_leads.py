"""Leads, their score history, filtered listings and the leaderboard."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from query_api import cursor, reads
from query_api.auth import org_of
from query_api.errors import NotFoundError
from query_api.params import (
    Choice,
    Cursor,
    Instant,
    Integer,
    Number,
    Query,
    Text,
    lead_id,
    query,
)
from query_api.resources import Resources
from query_api.responses import JSON, Encoded, dumps

GRADES = frozenset(f"{letter}{digit}" for letter in "ABC" for digit in "123")
MAX_PAGE = 500
DEFAULT_PAGE = 50
MAX_LEADERBOARD = 1000
DEFAULT_LEADERBOARD = 10
MAX_SOURCE_LENGTH = 128

CURSOR_DESCRIPTION = (
    "Opaque `next_cursor` of the previous page; absent or empty for the first page."
)
PAGE = Integer("limit", "Items per page.", DEFAULT_PAGE, 1, MAX_PAGE)
BOARD_SIZE = Integer("limit", "Items per page.", DEFAULT_LEADERBOARD, 1, MAX_LEADERBOARD)
HISTORY_CURSOR = Cursor(
    "cursor", CURSOR_DESCRIPTION, lambda c: cursor.decode_position("history", c), 512
)
LEADS_CURSOR = Cursor("cursor", CURSOR_DESCRIPTION, cursor.decode_score_key, 512)
MIN_SCORE = Number("min_score", "Only leads scoring at least this.", 0, 100)
GRADE = Choice("grade", "Only leads of this grade.", tuple(sorted(GRADES)))
SOURCE = Text("source", "Only leads from this source.", MAX_SOURCE_LENGTH)
AS_OF = Instant(
    "as_of",
    "The ranking as it was at this instant (RFC 3339, with offset), from the score "
    "history; absent: now.",
)


def resources(request: Request) -> Resources:
    res: Resources = request.app.state.resources
    return res


@query()
async def get_lead(request: Request, q: Query) -> Response:
    # Cache hits never get here (query_api/hotpath.py); this computes and fills.
    lead = lead_id(request)
    if lead is None:
        raise NotFoundError("lead not found")
    res, org = resources(request), org_of(request)
    ticket = res.hot.epoch
    found = await reads.lead(res.pool, res.redis, res.keys, org, lead)
    if found is None:
        # Another org's lead answers exactly like a missing one.
        raise NotFoundError("lead not found")
    body = dumps(found)
    res.hot.put_lead(org, lead, body, ticket)
    return Encoded(body)


@query(HISTORY_CURSOR, PAGE)
async def get_lead_scores(request: Request, q: Query) -> Response:
    lead = lead_id(request)
    page = None
    if lead is not None:
        page = await reads.score_history(
            resources(request).pool, org_of(request), lead, q[HISTORY_CURSOR], q[PAGE]
        )
    if page is None:
        raise NotFoundError("lead not found")
    return JSON(page)


@query(MIN_SCORE, GRADE, SOURCE, LEADS_CURSOR, PAGE)
async def list_leads(request: Request, q: Query) -> Response:
    source = q[SOURCE]
    if source is not None and "\x00" in source:
        # PostgreSQL text cannot hold NUL, so no lead has this source.
        return JSON({"items": [], "next_cursor": None})
    page = await reads.leads(
        resources(request).pool,
        org_of(request),
        min_score=q[MIN_SCORE],
        grade=q[GRADE],
        source=source,
        after=q[LEADS_CURSOR],
        limit=q[PAGE],
    )
    return JSON(page)


@query(BOARD_SIZE, AS_OF)
async def leaderboard(request: Request, q: Query) -> Response:
    # Cache hits never get here (query_api/hotpath.py); this computes and fills.
    res, org = resources(request), org_of(request)
    as_of = q[AS_OF]
    if as_of is not None:
        # Not cached: a late score recorded for a past instant changes that past's answer.
        return JSON(await reads.leaderboard_as_of(res.pool, org, as_of, q[BOARD_SIZE]))
    ticket = res.hot.epoch
    body = dumps(await res.leaderboard.top(org, q[BOARD_SIZE]))
    # Keyed by the raw query string: the same bytes parse to the same (valid) parameters.
    res.hot.put_board(org, request.scope["query_string"], body, ticket)
    return Encoded(body)


class SharedPathRoute(Route):
    """A route whose path another route serves with other methods (GET and DELETE of
    /leads/{id}): a 405 names every method of the path, not only this route's."""

    def __init__(self, path: str, endpoint: object, *, methods: list[str], path_methods: str):
        super().__init__(path, endpoint, methods=methods)  # type: ignore[arg-type]
        self.path_methods = path_methods

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.methods and scope["method"] not in self.methods:
            raise HTTPException(status_code=405, headers={"Allow": self.path_methods})
        await self.app(scope, receive, send)


LEAD_METHODS = "DELETE, GET, HEAD"  # GET here, DELETE in query_api/routes_privacy.py
LEAD = SharedPathRoute("/leads/{id}", get_lead, methods=["GET"], path_methods=LEAD_METHODS)
LEADERBOARD = Route("/leaderboard", leaderboard, methods=["GET"])
routes = [
    LEAD,
    LEADERBOARD,
    Route("/leads", list_leads, methods=["GET"]),
    Route("/leads/{id}/scores", get_lead_scores, methods=["GET"]),
]
