"""Applying a batch of lead-events to their leads and scoring them: the pure core."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from domain.events import LeadEvent
from domain.explain import contributions, top_factors
from domain.features import features
from domain.lead import Lead, lead_aggregate_id
from domain.scoring import Scorer, is_change, needs_explanation, score_leads


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
    now = [clock(lead) for lead in to_score]
    rows = [features(lead, at) for lead, at in zip(to_score, now, strict=True)]
    cards = score_leads(to_score, now, scorer, rows)
    changed = [
        (lead, card, row)
        for lead, card, row in zip(to_score, cards, rows, strict=True)
        if is_change(lead, card)
    ]
    # One more model call for the whole batch explains the material changes.
    explain = [(lead, row) for lead, card, row in changed if needs_explanation(lead, card)]
    explained = contributions([row for _lead, row in explain], scorer.predict)
    factors = {
        lead.id: top_factors(row, parts)
        for (lead, row), (_ref, parts) in zip(explain, explained, strict=True)
    }
    for lead, card, _row in changed:
        lead.record_score(
            score=card.total,
            components=card.components,
            grade=card.grade,
            model_version=card.model_version,
            factors=factors.get(lead.id, lead.factors),
            caused_by_event_id=last_cause[lead.id],
            scored_at=scored_at,
        )
        out.scored += 1
    return out


def event_time(lead: Lead) -> datetime:
    """Score as of the lead's latest event: deterministic, so replays agree."""
    return lead.last_event_at
