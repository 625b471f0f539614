"""Applying a batch of lead-events to their leads and scoring them: the pure core."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from domain.events import LeadEvent
from domain.lead import Lead, lead_aggregate_id
from domain.scoring import Scorer, is_change, score_leads


@dataclass
class BatchOutcome:
    """What one batch did. ``touched`` are the aggregates with new events to save."""

    applied: int = 0
    duplicates: int = 0
    scored: int = 0
    touched: dict[UUID, Lead] = field(default_factory=dict)


def lead_ids(events: Iterable[LeadEvent]) -> set[UUID]:
    return {lead_aggregate_id(e.org_id, e.lead_id) for e in events}


def apply_batch(
    events: Iterable[LeadEvent],
    leads: Mapping[UUID, Lead | None],
    scorer: Scorer,
    clock: Callable[[Lead], datetime],
    scored_at: datetime,
) -> BatchOutcome:
    """Apply events in order to their leads, then score every lead that changed, once.

    ``leads`` holds the current state of each lead the batch touches (None when new).
    ``clock(lead)`` is the time a lead is scored as of.
    """
    out = BatchOutcome()
    current: dict[UUID, Lead | None] = dict(leads)
    last_cause: dict[UUID, str] = {}
    for ev in events:
        agg_id = lead_aggregate_id(ev.org_id, ev.lead_id)
        lead = current.get(agg_id)
        if lead is None:
            lead = Lead.open(ev)
            current[agg_id] = lead
            applied = True
        else:
            applied = lead.handle(ev)
        if applied:
            out.applied += 1
            out.touched[agg_id] = lead
            last_cause[agg_id] = ev.event_id
        else:
            out.duplicates += 1

    to_score = list(out.touched.values())
    cards = score_leads(to_score, [clock(lead) for lead in to_score], scorer)
    for lead, card in zip(to_score, cards, strict=True):
        if is_change(lead, card):
            lead.record_score(
                score=card.total,
                components=card.components,
                grade=card.grade,
                model_version=card.model_version,
                factors=[],
                caused_by_event_id=last_cause[lead.id],
                scored_at=scored_at,
            )
            out.scored += 1
    return out


def event_time(lead: Lead) -> datetime:
    """Score as of the lead's latest event: deterministic, so replays agree."""
    return lead.last_event_at
