"""The Lead aggregate: a lead's history as events, applied exactly once by event id."""

from __future__ import annotations

import math
from datetime import datetime
from functools import lru_cache
from typing import Any, ClassVar
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.events import ActivityKind, EventType, LeadEvent

LEAD_NAMESPACE = uuid5(NAMESPACE_URL, "https://leadscore.io/leads")

# Engagement half-life in days per activity kind: intent signals (demo, pricing)
# fade slower than passive ones (opens, page views).
HALF_LIFE_DAYS: dict[str, float] = {
    ActivityKind.PAGE_VIEW: 7.0,
    ActivityKind.EMAIL_OPEN: 7.0,
    ActivityKind.EMAIL_CLICK: 10.0,
    ActivityKind.FORM_SUBMIT: 21.0,
    ActivityKind.DEMO_REQUEST: 30.0,
    ActivityKind.PRICING_PAGE: 14.0,
    ActivityKind.WEBINAR: 21.0,
    ActivityKind.CONTENT_DOWNLOAD: 14.0,
    ActivityKind.OTHER: 7.0,
}
ACTIVITY_WEIGHT: dict[str, float] = {
    ActivityKind.PAGE_VIEW: 1.0,
    ActivityKind.EMAIL_OPEN: 0.5,
    ActivityKind.EMAIL_CLICK: 2.0,
    ActivityKind.FORM_SUBMIT: 5.0,
    ActivityKind.DEMO_REQUEST: 12.0,
    ActivityKind.PRICING_PAGE: 4.0,
    ActivityKind.WEBINAR: 5.0,
    ActivityKind.CONTENT_DOWNLOAD: 3.0,
    ActivityKind.OTHER: 0.5,
}


@lru_cache(maxsize=65_536)
def lead_aggregate_id(org_id: str, lead_id: str) -> UUID:
    """Stable aggregate id: the same upstream lead always maps to one stream, per org."""
    return uuid5(LEAD_NAMESPACE, f"{org_id}\x1f{lead_id}")


def score_event_id(aggregate_id: UUID, version: int) -> UUID:
    """Stable id of a score-event: derived from the stored LeadScored event."""
    return uuid5(aggregate_id, str(version))


class Lead(Aggregate):
    """A lead's event-sourced state.

    Every lead-event becomes one domain event carrying its ``source_event_id``, so a
    redelivered lead-event is recognised by its id. The aggregate remembers only the
    ids of its last ``RECENT_EVENT_IDS`` lead-events, so its size does not grow with its
    history; ``knows_applied`` says when that is not enough to tell, and the event store
    answers for older ids (``apply_batch``'s ``stored``). Every event also carries
    ``org_id`` and ``lead_id`` so the log is self-describing for projections.

    The event store keeps snapshots of Leads (copies of their attributes): a change to
    the attributes sets ``class_version`` to one more and adds ``upcast_v{n}_v{n+1}``,
    a static method that brings an older snapshot's state up to date (the library's way).
    """

    # Ids of the latest lead-events kept in the aggregate. A redelivery after a crash or
    # a rebalance is usually among them; older ids are looked up in the event store.
    RECENT_EVENT_IDS: ClassVar[int] = 8

    @staticmethod
    def create_id(org_id: str, lead_id: str, **_: Any) -> UUID:
        return lead_aggregate_id(org_id, lead_id)

    @event("LeadCreated")
    def __init__(
        self,
        org_id: str,
        lead_id: str,
        created_at: datetime,
        profile: dict[str, Any],
        source_event_id: str | None,
    ) -> None:
        self.org_id = org_id
        self.lead_id = lead_id
        self.created_at = created_at
        self.profile: dict[str, Any] = dict(profile)
        # The ids of the last RECENT_EVENT_IDS lead-events applied, oldest first.
        self.recent_event_ids: dict[str, None] = {}
        self.applied_count = 0  # lead-events applied over the whole history
        if source_event_id is not None:
            self._remember(source_event_id)
        self.activity_counts: dict[str, int] = {}
        # Decayed engagement per kind, as of ``engagement_as_of`` (O(1) state).
        self.decayed: dict[str, float] = {}
        self.engagement_as_of: datetime | None = None
        self.first_activity_at: datetime | None = None
        self.last_activity_at: datetime | None = None
        self.last_event_at: datetime = created_at
        self.outcome: str | None = None
        self.outcome_at: datetime | None = None
        self.score: float | None = None
        self.grade: str | None = None
        self.model_version: str | None = None
        self.factors: list[dict[str, Any]] = []  # the current score's explanation
        self.stage: str | None = None  # lead, mql, sql, disqualified (with thresholds)
        self.rules_version: str | None = None
        self.score_count = 0

    # -- commands ---------------------------------------------------------

    @classmethod
    def open(cls, first: LeadEvent) -> Lead:
        """Start a lead's stream from its first event, whatever its type.

        Upstream order is not guaranteed: a lead seen first through an activity
        is created with an empty profile and the activity applied after.
        """
        if first.event_type is EventType.LEAD_CREATED:
            return cls(
                org_id=first.org_id,
                lead_id=first.lead_id,
                created_at=first.occurred_at,
                profile=dict(first.profile),
                source_event_id=first.event_id,
            )
        lead = cls(
            org_id=first.org_id,
            lead_id=first.lead_id,
            created_at=first.occurred_at,
            profile={},
            source_event_id=None,
        )
        lead.handle(first)
        return lead

    def knows_applied(self, event_id: str) -> bool | None:
        """Whether lead-event ``event_id`` was applied; None when only the store can tell
        (the lead has applied more lead-events than it remembers, and not this one lately).
        """
        if event_id in self.recent_event_ids:
            return True
        if self.applied_count == len(self.recent_event_ids):
            return False  # it remembers every id it ever applied
        return None

    def handle(self, ev: LeadEvent) -> bool:
        """Apply a lead-event. Returns False for an id among the recently applied;
        older ids are the caller's to rule out (``knows_applied``)."""
        if ev.event_id in self.recent_event_ids:
            return False
        if ev.event_type in (EventType.LEAD_CREATED, EventType.LEAD_UPDATED):
            changes = {k: v for k, v in ev.profile.items() if self.profile.get(k) != v}
            self._update_profile(self.org_id, self.lead_id, ev.event_id, ev.occurred_at, changes)
        elif ev.event_type is EventType.ACTIVITY_RECORDED:
            kind = ev.activity_kind or ActivityKind.OTHER
            self._record_activity(
                self.org_id,
                self.lead_id,
                ev.event_id,
                ev.occurred_at,
                str(kind),
                ev.activity_properties,
            )
        elif ev.event_type is EventType.LEAD_CONVERTED:
            self._convert(self.org_id, self.lead_id, ev.event_id, ev.occurred_at, ev.reason)
        elif ev.event_type is EventType.LEAD_DISQUALIFIED:
            self._disqualify(self.org_id, self.lead_id, ev.event_id, ev.occurred_at, ev.reason)
        else:  # pragma: no cover - EventType is closed
            raise ValueError(f"unknown event type {ev.event_type!r}")
        return True

    def record_score(
        self,
        *,
        score: float,
        components: dict[str, float],
        grade: str,
        model_version: str,
        factors: list[dict[str, Any]],
        caused_by_event_id: str,
        scored_at: datetime,
        stage: str | None = None,
        rules_version: str | None = None,
    ) -> None:
        self._scored(
            org_id=self.org_id,
            lead_id=self.lead_id,
            previous_score=self.score,
            score=score,
            components=components,
            grade=grade,
            model_version=model_version,
            factors=factors,
            caused_by_event_id=caused_by_event_id,
            scored_at=scored_at,
            previous_grade=self.grade,
            stage=stage,
            previous_stage=self.stage,
            rules_version=rules_version,
        )

    # -- events (their bodies are how state evolves, also on replay) ------

    @event("LeadUpdated")
    def _update_profile(
        self,
        org_id: str,
        lead_id: str,
        source_event_id: str,
        occurred_at: datetime,
        changes: dict[str, Any],
    ) -> None:
        self._remember(source_event_id)
        self.profile.update(changes)
        self._touch(occurred_at)

    @event("ActivityRecorded")
    def _record_activity(
        self,
        org_id: str,
        lead_id: str,
        source_event_id: str,
        occurred_at: datetime,
        kind: str,
        properties: dict[str, str],
    ) -> None:
        self._remember(source_event_id)
        self.activity_counts[kind] = self.activity_counts.get(kind, 0) + 1
        self._decay_to(occurred_at)
        self.decayed[kind] = self.decayed.get(kind, 0.0) + ACTIVITY_WEIGHT.get(kind, 0.5)
        if self.first_activity_at is None or occurred_at < self.first_activity_at:
            self.first_activity_at = occurred_at
        if self.last_activity_at is None or occurred_at > self.last_activity_at:
            self.last_activity_at = occurred_at
        self._touch(occurred_at)

    @event("LeadConverted")
    def _convert(
        self,
        org_id: str,
        lead_id: str,
        source_event_id: str,
        occurred_at: datetime,
        reason: str | None,
    ) -> None:
        self._record_outcome("converted", source_event_id, occurred_at)

    @event("LeadDisqualified")
    def _disqualify(
        self,
        org_id: str,
        lead_id: str,
        source_event_id: str,
        occurred_at: datetime,
        reason: str | None,
    ) -> None:
        self._record_outcome("disqualified", source_event_id, occurred_at)

    @event("LeadScored")
    def _scored(
        self,
        org_id: str,
        lead_id: str,
        previous_score: float | None,
        score: float,
        components: dict[str, float],
        grade: str,
        model_version: str,
        factors: list[dict[str, Any]],
        caused_by_event_id: str,
        scored_at: datetime,
        # Added after the first release: events stored before have none, hence defaults.
        previous_grade: str | None = None,
        stage: str | None = None,
        previous_stage: str | None = None,
        rules_version: str | None = None,
    ) -> None:
        self.score = score
        self.grade = grade
        self.model_version = model_version
        self.factors = factors
        self.stage = stage
        self.rules_version = rules_version
        self.score_count += 1

    # -- pure helpers -----------------------------------------------------

    def _record_outcome(self, outcome: str, source_event_id: str, occurred_at: datetime) -> None:
        self._remember(source_event_id)
        self.outcome = outcome
        self.outcome_at = occurred_at
        self._touch(occurred_at)

    def _remember(self, source_event_id: str) -> None:
        recent = self.recent_event_ids
        recent[source_event_id] = None
        self.applied_count += 1
        if len(recent) > self.RECENT_EVENT_IDS:
            del recent[next(iter(recent))]

    def _touch(self, occurred_at: datetime) -> None:
        if occurred_at > self.last_event_at:
            self.last_event_at = occurred_at

    def _decay_to(self, when: datetime) -> None:
        # Out-of-order activities are added undecayed at the current reference time:
        # slightly generous, but keeps the state O(1) and deterministic on replay.
        if self.engagement_as_of is None:
            self.engagement_as_of = when
            return
        if when <= self.engagement_as_of:
            return
        self.decayed = decayed_engagement(self.decayed, self.engagement_as_of, when)
        self.engagement_as_of = when

    def engagement_at(self, now: datetime) -> dict[str, float]:
        """Decayed engagement per activity kind as of ``now`` (never increases with time)."""
        if self.engagement_as_of is None or now <= self.engagement_as_of:
            return dict(self.decayed)
        return decayed_engagement(self.decayed, self.engagement_as_of, now)


def decayed_engagement(
    values: dict[str, float], since: datetime, now: datetime
) -> dict[str, float]:
    days = (now - since).total_seconds() / 86_400.0
    return {
        kind: value * math.pow(0.5, days / HALF_LIFE_DAYS.get(kind, 7.0))
        for kind, value in values.items()
    }
