"""Applying a batch of lead-events to their leads and scoring them: the pure core."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from domain.events import LeadEvent
from domain.explain import contributions, top_factors
from domain.featurespec import FeatureSpec
from domain.lead import Lead, lead_aggregate_id
from domain.rules import NO_RULES, RuleEffect, ScoringRules, stage_of
from domain.rules import apply as apply_rules
from domain.scoring import (
    ScoreCard,
    Scorer,
    ScorerFor,
    is_change,
    needs_explanation,
    route,
    score_leads,
    spec_of,
)


@dataclass(frozen=True, slots=True)
class Observation:
    """What one model saw and said for one org's leads in a batch (for drift)."""

    org_id: str
    model_version: str
    rows: list[list[float]]
    scores: list[float]  # the model's score, 0-100, before the org's rules


@dataclass(frozen=True, slots=True)
class ShadowScore:
    """A shadow model's score of a lead beside the active one's: recorded, never published."""

    aggregate_id: UUID
    org_id: str
    lead_id: str
    active_version: str
    active_score: float
    shadow_version: str
    shadow_score: float


@dataclass
class BatchOutcome:
    """What one batch did. ``touched`` are the aggregates with new events to save."""

    applied: int = 0
    duplicates: int = 0
    scored: int = 0
    touched: dict[UUID, Lead] = field(default_factory=dict)
    observations: list[Observation] = field(default_factory=list)
    shadows: list[ShadowScore] = field(default_factory=list)


def lead_ids(events: Iterable[LeadEvent]) -> set[UUID]:
    return {lead_aggregate_id(e.org_id, e.lead_id) for e in events}


def undecided(
    events: Iterable[LeadEvent], leads: Mapping[UUID, Lead | None]
) -> list[tuple[UUID, str]]:
    """The (lead, event id) pairs only the event store can rule out as duplicates: events
    of stored leads that have applied more lead-events than they remember."""
    out = []
    for ev in events:
        agg_id = lead_aggregate_id(ev.org_id, ev.lead_id)
        lead = leads.get(agg_id)
        if lead is not None and lead.knows_applied(ev.event_id) is None:
            out.append((agg_id, ev.event_id))
    return out


def apply_batch(
    events: Iterable[LeadEvent],
    leads: Mapping[UUID, Lead | None],
    scorer: Scorer | ScorerFor,
    clock: Callable[[Lead], datetime],
    scored_at: datetime,
    rules_for: Callable[[str], ScoringRules] = lambda _org: NO_RULES,
    shadow_for: Callable[[str], Scorer | None] = lambda _org: None,
    stored: Collection[tuple[UUID, str]] = (),
) -> BatchOutcome:
    """Apply events in order to their leads, then score every lead that changed, once.

    ``leads`` holds the current state of each lead the batch touches (None when new).
    ``stored`` holds the (lead, event id) pairs of ``undecided(events, leads)`` that the
    event store already has: duplicates older than what the leads remember.
    ``scorer`` is one model, or the model for each org; ``clock(lead)`` is the time a
    lead is scored as of; ``rules_for(org)`` the org's scoring rules, applied to the
    model's score (domain/rules.py); ``shadow_for(org)`` a model scoring beside it.
    """
    out = BatchOutcome()
    current: dict[UUID, Lead | None] = dict(leads)
    last_cause: dict[UUID, str] = {}
    keyed = [(ev, (lead_aggregate_id(ev.org_id, ev.lead_id), ev.event_id)) for ev in events]
    # Duplicates known before the batch is applied: the store's answer, and the ids the
    # leads remember now. A lead forgets its oldest ids as the batch's new events come,
    # so a redelivery behind them in the same batch must be recognised up front; and a
    # lead given more than RECENT_EVENT_IDS events here forgets the first ones before the
    # batch is stored, so what the batch applies is remembered until its end.
    seen = set(stored)
    for _ev, key in keyed:
        lead = leads.get(key[0])
        if lead is not None and lead.knows_applied(key[1]):
            seen.add(key)
    for ev, key in keyed:
        agg_id = key[0]
        if key in seen:
            out.duplicates += 1
            continue
        lead = current.get(agg_id)
        if lead is None:
            lead = Lead.open(ev)
            current[agg_id] = lead
            applied = True
        else:
            applied = lead.handle(ev)
        if applied:
            seen.add(key)
            out.applied += 1
            out.touched[agg_id] = lead
            last_cause[agg_id] = ev.event_id
        else:
            out.duplicates += 1

    to_score = list(out.touched.values())
    now = [clock(lead) for lead in to_score]
    _score(out, to_score, now, last_cause, route(scorer), scored_at, rules_for, shadow_for)
    return out


def rescore(
    leads: Iterable[Lead],
    scorer: Scorer | ScorerFor,
    clock: Callable[[Lead], datetime],
    scored_at: datetime,
    cause: str,
    rules_for: Callable[[str], ScoringRules] = lambda _org: NO_RULES,
    shadow_for: Callable[[str], Scorer | None] = lambda _org: None,
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
    _score(out, to_score, now, causes, route(scorer), scored_at, rules_for, shadow_for)
    out.touched = {lead.id: lead for lead in to_score if lead.version != before[lead.id]}
    return out


def _score(
    out: BatchOutcome,
    to_score: list[Lead],
    now: list[datetime],
    causes: Mapping[UUID, str],
    scorer_for: ScorerFor,
    scored_at: datetime,
    rules_for: Callable[[str], ScoringRules],
    shadow_for: Callable[[str], Scorer | None],
) -> None:
    """Score leads, one model call per model (and shadow) in use; record changed scores."""
    groups: dict[tuple[int, int], list[int]] = {}
    models: dict[int, Scorer | None] = {}
    for i, lead in enumerate(to_score):
        active, shadow = scorer_for(lead.org_id), shadow_for(lead.org_id)
        models[id(active)], models[id(shadow)] = active, shadow
        groups.setdefault((id(active), id(shadow)), []).append(i)
    for (active_id, shadow_id), members in groups.items():
        active = models[active_id]
        assert active is not None
        _score_with(
            out,
            [to_score[i] for i in members],
            [now[i] for i in members],
            causes,
            active,
            models[shadow_id],
            scored_at,
            rules_for,
        )


def _score_with(
    out: BatchOutcome,
    leads: list[Lead],
    now: list[datetime],
    causes: Mapping[UUID, str],
    scorer: Scorer,
    shadow: Scorer | None,
    scored_at: datetime,
    rules_for: Callable[[str], ScoringRules],
) -> None:
    """Score leads in one model call, apply rules, record changed scores."""
    spec = spec_of(scorer)
    rows = [spec.row(lead, at) for lead, at in zip(leads, now, strict=True)]
    cards = score_leads(leads, now, scorer, rows)
    _observe(out, leads, rows, cards, scorer.version)
    rules = [rules_for(lead.org_id) for lead in leads]
    effects = [
        apply_rules(r, lead, card) for r, lead, card in zip(rules, leads, cards, strict=True)
    ]
    stages = [stage_of(r, e) for r, e in zip(rules, effects, strict=True)]
    if shadow is not None:
        _shadow(out, leads, now, rows, rules, effects, shadow, spec)
    changed = [
        (lead, effect, row, stage, r.version)
        for lead, effect, row, stage, r in zip(leads, effects, rows, stages, rules, strict=True)
        if is_change(lead, effect.card) or stage != lead.stage
    ]
    # One more model call for the whole batch explains the material changes; the rules'
    # own points join the model's contributions.
    explain = [c for c in changed if needs_explanation(c[0], c[1].card)]
    explained = contributions([c[2] for c in explain], scorer.predict, spec)
    factors = {
        lead.id: top_factors(row, {**parts, **e.parts}, e.labels, spec)
        for (lead, e, row, _s, _v), (_ref, parts) in zip(explain, explained, strict=True)
    }
    for lead, effect, _row, stage, rules_version in changed:
        card = effect.card
        lead.record_score(
            score=card.total,
            components=card.components,
            grade=card.grade,
            model_version=card.model_version,
            factors=factors.get(lead.id, lead.factors),
            caused_by_event_id=causes[lead.id],
            scored_at=scored_at,
            stage=stage,
            rules_version=None if rules_version == NO_RULES.version else rules_version,
        )
    out.scored += len(changed)


def _observe(
    out: BatchOutcome,
    leads: list[Lead],
    rows: list[list[float]],
    cards: list[ScoreCard],
    version: str,
) -> None:
    by_org: dict[str, Observation] = {}
    for lead, row, card in zip(leads, rows, cards, strict=True):
        seen = by_org.get(lead.org_id)
        if seen is None:
            seen = by_org[lead.org_id] = Observation(lead.org_id, version, [], [])
        seen.rows.append(row)
        seen.scores.append(card.total)
    out.observations.extend(by_org.values())


def _shadow(
    out: BatchOutcome,
    leads: list[Lead],
    now: list[datetime],
    rows: list[list[float]],
    rules: list[ScoringRules],
    effects: list[RuleEffect],
    shadow: Scorer,
    active_spec: FeatureSpec,
) -> None:
    """The shadow model's score under the same rules, beside the active one's."""
    # A shadow with another feature spec (or other vocabularies) reads rows of its own.
    same_spec = spec_of(shadow) == active_spec
    cards = score_leads(leads, now, shadow, rows if same_spec else None)
    for lead, r, card, active in zip(leads, rules, cards, effects, strict=True):
        out.shadows.append(
            ShadowScore(
                aggregate_id=lead.id,
                org_id=lead.org_id,
                lead_id=lead.lead_id,
                active_version=active.card.model_version,
                active_score=active.card.total,
                shadow_version=shadow.version,
                shadow_score=apply_rules(r, lead, card).card.total,
            )
        )


def event_time(lead: Lead) -> datetime:
    """Score as of the lead's latest event: deterministic, so replays agree.

    A lead with an outcome is scored as of its latest lead-event before it: the outcome
    tells the model nothing it reads, and scoring it later would only decay a converted
    lead's engagement (what sales saw before the lead converted is the score that counts,
    and the one training rows are built like: adapters/training_rows.py).
    """
    return lead.last_event_at if lead.outcome is None else lead.last_open_event_at
