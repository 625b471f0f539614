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
from domain.rules import NO_RULES, ScoringRules
from domain.rules import apply as apply_rules
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
    rules_for: Callable[[str], ScoringRules] = lambda _org: NO_RULES,
) -> BatchOutcome:
    """Apply events in order to their leads, then score every lead that changed, once.

    ``leads`` holds the current state of each lead the batch touches (None when new).
    ``clock(lead)`` is the time a lead is scored as of; ``rules_for(org)`` the org's
    scoring rules, applied to the model's score (domain/rules.py).
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
    out.scored = _score(
        to_score, [clock(lead) for lead in to_score], last_cause, scorer, scored_at, rules_for
    )
    return out


def rescore(
    leads: Iterable[Lead],
    scorer: Scorer,
    clock: Callable[[Lead], datetime],
    scored_at: datetime,
    cause: str,
    rules_for: Callable[[str], ScoringRules] = lambda _org: NO_RULES,
) -> BatchOutcome:
    """Score leads with no new event: as of a later time (decay) or with another model
    (replay). ``clock(lead)`` is the time each is scored as of.

    Only leads whose score, grade or model changes record a LeadScored (caused by
    ``cause``) and come back in ``touched``; so rescoring twice records nothing new.
    """
    to_score = list(leads)
    out = BatchOutcome()
    causes = {lead.id: cause for lead in to_score}
    before = {lead.id: lead.version for lead in to_score}
    now = [clock(lead) for lead in to_score]
    out.scored = _score(to_score, now, causes, scorer, scored_at, rules_for)
    out.touched = {lead.id: lead for lead in to_score if lead.version != before[lead.id]}
    return out


def _score(
    to_score: list[Lead],
    now: list[datetime],
    causes: Mapping[UUID, str],
    scorer: Scorer,
    scored_at: datetime,
    rules_for: Callable[[str], ScoringRules],
) -> int:
    """Score leads in one model call, apply rules, record changed scores; count them."""
    rows = [features(lead, at) for lead, at in zip(to_score, now, strict=True)]
    effects = [
        apply_rules(rules_for(lead.org_id), lead, card)
        for lead, card in zip(to_score, score_leads(to_score, now, scorer, rows), strict=True)
    ]
    changed = [
        (lead, effect, row)
        for lead, effect, row in zip(to_score, effects, rows, strict=True)
        if is_change(lead, effect.card)
    ]
    # One more model call for the whole batch explains the material changes; the rules'
    # own points join the model's contributions.
    explain = [(lead, e, row) for lead, e, row in changed if needs_explanation(lead, e.card)]
    explained = contributions([row for _lead, _e, row in explain], scorer.predict)
    factors = {
        lead.id: top_factors(row, {**parts, **e.parts}, e.labels)
        for (lead, e, row), (_ref, parts) in zip(explain, explained, strict=True)
    }
    for lead, effect, _row in changed:
        card = effect.card
        lead.record_score(
            score=card.total,
            components=card.components,
            grade=card.grade,
            model_version=card.model_version,
            factors=factors.get(lead.id, lead.factors),
            caused_by_event_id=causes[lead.id],
            scored_at=scored_at,
        )
    return len(changed)


def event_time(lead: Lead) -> datetime:
    """Score as of the lead's latest event: deterministic, so replays agree."""
    return lead.last_event_at
