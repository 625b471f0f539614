"""A person's rights: GET /leads/{id}/export (access) and DELETE /leads/{id} (erasure).

Erasure needs an admin API key (``leadscore apikeys create --admin``). It appends
LeadForgotten to the event store and destroys the lead's data key, which the API's own
database role may not do, so it alone runs as the tables' owner (``LEADSCORE_PG_DSN``),
in a thread, per request.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from adapters.erasure import Forgotten, UnknownLeadError, forget_lead
from adapters.eventstore import open_store
from adapters.settings import Settings
from domain.lead import lead_aggregate_id
from projections.export import lead_export
from query_api.auth import org_of, require_admin
from query_api.errors import NotFoundError
from query_api.params import Query, Text, lead_id, query
from query_api.resources import Resources
from query_api.responses import JSON
from query_api.routes_leads import LEAD_METHODS, SharedPathRoute

REASON = Text("reason", "Why (a ticket number; no personal data). Kept in the event.", 200)


def _resources(request: Request) -> Resources:
    res: Resources = request.app.state.resources
    return res


@query()
async def export_lead(request: Request, q: Query) -> Response:
    lead = lead_id(request)
    found = None
    if lead is not None:
        org = org_of(request)
        found = await lead_export(_resources(request).pool, org, lead, lead_aggregate_id(org, lead))
    if found is None:
        raise NotFoundError("lead not found")
    return JSON(found)


@query(REASON)
async def delete_lead(request: Request, q: Query) -> Response:
    require_admin(request)
    lead = lead_id(request)
    if lead is None:
        raise NotFoundError("lead not found")
    org = org_of(request)
    try:
        done = await asyncio.to_thread(_forget, _resources(request).settings, org, lead, q[REASON])
    except UnknownLeadError as exc:
        raise NotFoundError("lead not found") from exc
    return JSON(done.as_dict())


def _forget(settings: Settings, org: str, lead: str, reason: str | None) -> Forgotten:
    store = open_store(settings.pg_dsn, cache_size=0)
    try:
        return forget_lead(store, settings.pg_dsn, org, lead, reason)
    finally:
        store.close()


routes = [
    Route("/leads/{id}/export", export_lead, methods=["GET"]),
    SharedPathRoute("/leads/{id}", delete_lead, methods=["DELETE"], path_methods=LEAD_METHODS),
]
