"""Time travel: a lead as of any past instant, its score changes with their causes, and
what changed between two instants; answered from the event store (query_api/store_reads.py).

An instant is when the engine stored what it knew (domain/timeline.py): "as of T" is the
lead the engine held at T, at the version current then.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from domain import timeline
from domain.lead import Lead
from query_api.auth import org_of
from query_api.errors import InvalidParametersError, NotFoundError
from query_api.params import Instant, Query, lead_id, query
from query_api.resources import Resources
from query_api.responses import JSON
from query_api.routes_leads import resources

AT = Instant("at", "The instant (RFC 3339, with offset) to show the lead as of.", required=True)
FROM = Instant("from", "The earlier instant (RFC 3339, with offset).", required=True)
TO = Instant("to", "The later instant (RFC 3339, with offset).", required=True)


async def lead_events(res: Resources, org: str, lead: str | None) -> list[Any]:
    """The lead's stored events; NotFoundError for a missing (or another org's) lead."""
    events = None if lead is None else await res.store.events(org, lead)
    if events is None:
        # Another org's lead answers exactly like a missing one.
        raise NotFoundError("lead not found")
    return events


async def lead_as_of(res: Resources, org: str, lead: str, at: datetime) -> dict[str, Any]:
    """The as-of answer (the console's time slider reads it too)."""
    events = await lead_events(res, org, lead)
    version = _version(events, at, AT.name)
    state = await res.store.lead_at(org, lead, version)
    return as_of(state, events, at, version)


async def _events(request: Request) -> tuple[str, str, list[Any]]:
    lead, org = lead_id(request), org_of(request)
    events = await lead_events(resources(request), org, lead)
    assert lead is not None
    return org, lead, events


def _version(events: list[Any], at: datetime, name: str) -> int:
    version = timeline.version_at(events, at)
    if version is None:
        created = events[0].timestamp.isoformat()
        raise InvalidParametersError(
            [
                {
                    "parameter": name,
                    "in": "query",
                    "message": f"is before the lead was created ({created})",
                }
            ]
        )
    return version


def as_of(lead: Lead, events: list[Any], at: datetime, version: int) -> dict[str, Any]:
    """The lead at ``version`` as the API shows it; fit and engagement from its last score."""
    scored = timeline.last_score(timeline.prefix(events, version))
    status = {"converted": "converted", "disqualified": "disqualified"}.get(
        lead.outcome or "", "open"
    )
    return {
        "org_id": lead.org_id,
        "lead_id": lead.lead_id,
        "at": at,
        "version": version,
        "recorded_at": lead.modified_on,
        "created_at": lead.created_at,
        "profile": dict(lead.profile),
        "status": status,
        "last_event_at": lead.last_event_at,
        "activity_counts": dict(lead.activity_counts),
        "score": None
        if scored is None
        else {
            "score": lead.score,
            "grade": lead.grade,
            "stage": lead.stage,
            "fit": scored.components.get("fit"),
            "engagement": scored.components.get("engagement"),
            "model_version": lead.model_version,
            "rules_version": lead.rules_version,
            "factors": lead.factors,
            "version": scored.originator_version,
            "recorded_at": scored.timestamp,
        },
    }


@query(AT)
async def get_as_of(request: Request, q: Query) -> Response:
    at = q[AT]
    assert at is not None
    lead = lead_id(request)
    if lead is None:
        raise NotFoundError("lead not found")
    return JSON(await lead_as_of(resources(request), org_of(request), lead, at))


@query()
async def get_timeline(request: Request, q: Query) -> Response:
    _org, lead_name, events = await _events(request)
    return JSON({"lead_id": lead_name, "items": timeline.timeline(events)})


@query(FROM, TO)
async def get_diff(request: Request, q: Query) -> Response:
    _org, lead_name, events = await _events(request)
    start, end = q[FROM], q[TO]
    assert start is not None and end is not None
    if end < start:
        raise InvalidParametersError(
            [{"parameter": TO.name, "in": "query", "message": "must not be before `from`"}]
        )
    v_from = _version(events, start, FROM.name)
    v_to = _version(events, end, TO.name)
    return JSON(
        {"lead_id": lead_name, "from": start, "to": end, **timeline.diff(events, v_from, v_to)}
    )


routes = [
    Route("/leads/{id}/as-of", get_as_of, methods=["GET"]),
    Route("/leads/{id}/timeline", get_timeline, methods=["GET"]),
    Route("/leads/{id}/diff", get_diff, methods=["GET"]),
]
