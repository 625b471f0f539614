"""The lead-events behind the event store's history, for training and backtests.

The store holds what the aggregates recorded, in the notification log's one global order;
each lead's events are in the order they were applied. Turned back into LeadEvents
(scores skipped), they replay through the same domain code as the workload generator's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from adapters.eventstore import LeadStore
from domain.events import ActivityKind, EventType, LeadEvent
from domain.lead import Lead

_LEAD_EVENTS = (
    Lead.LeadCreated,
    Lead.LeadUpdated,
    Lead.ActivityRecorded,
    Lead.LeadConverted,
    Lead.LeadDisqualified,
)
_OUTCOMES = {
    "LeadConverted": EventType.LEAD_CONVERTED,
    "LeadDisqualified": EventType.LEAD_DISQUALIFIED,
}
TOPICS = tuple(f"{cls.__module__}:{cls.__qualname__}" for cls in _LEAD_EVENTS)


def lead_events(store: LeadStore, org: str | None = None) -> Iterator[LeadEvent]:
    """Every stored lead-event (of ``org``, or of all orgs), in log order."""
    for note in store.all_notifications(TOPICS):
        ev = as_lead_event(store.to_event(note), note.id)
        if org is None or ev.org_id == org:
            yield ev


def as_lead_event(ev: Any, position: int) -> LeadEvent:
    """One recorded domain event as the lead-event that caused it."""
    kind = type(ev).__name__
    # A lead first seen through an activity was created without a lead-event of its own.
    event_id = getattr(ev, "source_event_id", None) or f"store:{position}"
    if kind == "LeadCreated":
        return LeadEvent(
            event_id, EventType.LEAD_CREATED, ev.org_id, ev.lead_id, ev.created_at,
            dict(ev.profile), attributes=dict(getattr(ev, "attributes", None) or {}),
        )  # fmt: skip
    if kind == "LeadUpdated":
        return LeadEvent(
            event_id, EventType.LEAD_UPDATED, ev.org_id, ev.lead_id, ev.occurred_at,
            dict(ev.changes), attributes=dict(getattr(ev, "attributes", None) or {}),
        )  # fmt: skip
    if kind == "ActivityRecorded":
        return LeadEvent(
            event_id, EventType.ACTIVITY_RECORDED, ev.org_id, ev.lead_id, ev.occurred_at,
            activity_kind=ActivityKind(ev.kind), activity_properties=dict(ev.properties),
        )  # fmt: skip
    if kind in _OUTCOMES:
        return LeadEvent(
            event_id, _OUTCOMES[kind], ev.org_id, ev.lead_id, ev.occurred_at, reason=ev.reason
        )
    raise ValueError(f"not a lead-event's record: {kind}")
