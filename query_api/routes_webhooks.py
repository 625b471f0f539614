"""Webhook delivery status, the key's org's deliveries only (adapters/webhooks.py owns
the tables, streams/webhook_dispatcher.py records the attempts)."""

from __future__ import annotations

import re

import asyncpg
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from query_api.auth import org_of
from query_api.cursor import CursorError
from query_api.errors import NotFoundError
from query_api.params import Choice, Cursor, Integer, Query, query
from query_api.responses import JSON
from query_api.routes_leads import resources

# The CHECK of webhook_deliveries.status (not imported: that module pulls in the
# event store and Kafka clients, which the API process does not otherwise load).
STATUSES = ("pending", "delivered", "dead")
DEFAULT_PAGE = 50
MAX_PAGE = 500
_ID = re.compile(r"^[0-9]{1,18}$")

_SELECT = (
    "SELECT d.id, d.webhook_id, w.url, d.org_id, d.event_id, d.event_type, d.status, "
    "d.attempts, d.last_status, d.last_error, d.next_attempt_at, d.created_at, "
    "d.delivered_at FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id "
)


def _delivery_id(raw: str) -> int:
    """A cursor or path id: a delivery id (digits only; fits a bigint)."""
    if not _ID.match(raw):
        raise CursorError("malformed cursor")
    return int(raw)


STATUS = Choice("status", "Only deliveries in this state (dead: the dead letters).", STATUSES)
BEFORE = Cursor(
    "cursor",
    "`next_cursor` of the previous page; absent or empty for the first page.",
    _delivery_id,
    18,
    "^[0-9]*$",
)
PAGE = Integer("limit", "Items per page.", DEFAULT_PAGE, 1, MAX_PAGE)


@query(STATUS, BEFORE, PAGE)
async def list_deliveries(request: Request, q: Query) -> Response:
    limit = q[PAGE]
    try:
        rows = await resources(request).pool.fetch(
            _SELECT + "WHERE d.org_id = $1 AND ($2::text IS NULL OR d.status = $2) "
            "AND ($3::bigint IS NULL OR d.id < $3) ORDER BY d.id DESC LIMIT $4",
            org_of(request),
            q[STATUS],
            q[BEFORE],
            limit + 1,
        )
    except asyncpg.UndefinedTableError:
        rows = []  # no webhook was ever added, so there is no delivery either
    items = [dict(r) for r in rows[:limit]]
    more = len(rows) > limit
    return JSON({"items": items, "next_cursor": str(items[-1]["id"]) if more else None})


@query()
async def get_delivery(request: Request, q: Query) -> Response:
    raw = str(request.path_params.get("id", ""))
    # An id no delivery can have is simply not found, as for leads.
    row = None
    if _ID.match(raw):
        try:
            row = await resources(request).pool.fetchrow(
                _SELECT + "WHERE d.org_id = $1 AND d.id = $2", org_of(request), int(raw)
            )
        except asyncpg.UndefinedTableError:
            row = None
    if row is None:
        # Another org's delivery answers exactly like a missing one.
        raise NotFoundError("delivery not found")
    return JSON(dict(row))


routes = [
    Route("/webhooks/deliveries", list_deliveries, methods=["GET"]),
    Route("/webhooks/deliveries/{id}", get_delivery, methods=["GET"]),
]
