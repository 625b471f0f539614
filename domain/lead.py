"""The Lead aggregate: a lead's history as events, applied exactly once by event id."""

from __future__ import annotations

import math
import sys
from datetime import datetime
from functools import lru_cache
from typing import Any, ClassVar
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.events import PII_FIELDS, ActivityKind, EventType, LeadEvent

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


# Running activity state kept for feature specs (domain/featurespec.py): per activity kind
# and per (kind, property), totals plus per-day buckets over the last WINDOW_DAYS days, so
# a spec can ask for counts, sums, means, maxima and last values over all time or any
# window up to WINDOW_DAYS. Caps keep a lead's size bounded whatever upstream sends.
WINDOW_DAYS = 30
MAX_PROPERTY_STATS = 24  # (kind, property) pairs tracked per lead; later new ones ignored
MAX_ATTRIBUTES = 64  # custom attributes kept per lead; later new names ignored
MAX_TEXT = 80  # characters kept of a non-numeric property's last value


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
    # 2: attributes and the running activity state for feature specs (upcast_v1_v2).
    # 3: ``forgotten`` (upcast_v2_v3).
    class_version: ClassVar[int] = 3

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
        attributes: dict[str, str] | None = None,  # lead_event v3; None in older events
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
        # The latest lead-event but an outcome: when the lead was last seen open. A lead
        # with an outcome is scored as of then (domain/processing.py, event_time).
        self.last_open_event_at: datetime = created_at
        self.outcome: str | None = None
        self.outcome_at: datetime | None = None
        self.score: float | None = None
        self.grade: str | None = None
        self.model_version: str | None = None
        self.factors: list[dict[str, Any]] = []  # the current score's explanation
        self.stage: str | None = None  # lead, mql, sql, disqualified (with thresholds)
        self.rules_version: str | None = None
        self.score_count = 0
        self.attributes: dict[str, str] = {}
        self._set_attributes(attributes or {})
        # Flat lists, a third of the memory of a list per bucket (see the functions below).
        # Per activity kind: [last time (epoch s), day, count, 0, day, count, 0, ...].
        self.kind_activity: dict[str, list[Any]] = {}
        # Per "kind\x1fproperty" with numeric values: [n, sum, max, last, last time,
        # day, n, sum, ...]; with text values, the latest text alone in property_text.
        self.property_stats: dict[str, list[Any]] = {}
        self.property_text: dict[str, str] = {}
        # Set by LeadForgotten: personal data is dropped from then on, whatever arrives.
        self.forgotten = False

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        """Snapshots taken before attributes and activity state: start them empty."""
        state["attributes"] = {}
        state["kind_activity"] = {}
        state["property_stats"] = {}
        state["property_text"] = {}
        state["last_open_event_at"] = state["last_event_at"]

    @staticmethod
    def upcast_v2_v3(state: dict[str, Any]) -> None:
        """Snapshots taken before erasure existed: not forgotten."""
        state["forgotten"] = False

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
                attributes=dict(first.attributes) or None,
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
            profile, new_attributes = ev.profile, ev.attributes
            if self.forgotten:  # a forgotten person's data is not taken in again
                profile = {k: v for k, v in profile.items() if k not in PII_FIELDS}
                new_attributes = {}
            changes = {k: v for k, v in profile.items() if self.profile.get(k) != v}
            attributes = {k: v for k, v in new_attributes.items() if self.attributes.get(k) != v}
            self._update_profile(
                self.org_id,
                self.lead_id,
                ev.event_id,
                ev.occurred_at,
                changes,
                attributes or None,
            )
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

    def forget(self, reason: str | None, occurred_at: datetime) -> None:
        """Erase the person: their personal data leaves the state (the event store's
        copies become unreadable when the lead's key is destroyed, adapters/lead_keys.py)."""
        self._forgotten(self.org_id, self.lead_id, reason, occurred_at)

    # -- events (their bodies are how state evolves, also on replay) ------

    @event("LeadForgotten")
    def _forgotten(
        self, org_id: str, lead_id: str, reason: str | None, occurred_at: datetime
    ) -> None:
        # No personal data in the event itself: ids, the operator's reason, the time.
        self.forgotten = True
        self.profile = {k: v for k, v in self.profile.items() if k not in PII_FIELDS}
        self.attributes = {}
        # Text of activity properties (form answers, campaign names) may name the person.
        self.property_text = {}

    @event("LeadUpdated")
    def _update_profile(
        self,
        org_id: str,
        lead_id: str,
        source_event_id: str,
        occurred_at: datetime,
        changes: dict[str, Any],
        attributes: dict[str, str] | None = None,  # lead_event v3; None in older events
    ) -> None:
        self._remember(source_event_id)
        self.profile.update(changes)
        if attributes:
            self._set_attributes(attributes)
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
        self._track_activity(kind, occurred_at, properties)
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
        self._touch(occurred_at, outcome=True)

    def _remember(self, source_event_id: str) -> None:
        recent = self.recent_event_ids
        recent[source_event_id] = None
        self.applied_count += 1
        if len(recent) > self.RECENT_EVENT_IDS:
            del recent[next(iter(recent))]

    def _set_attributes(self, values: dict[str, str]) -> None:
        for name, value in values.items():
            if name in self.attributes or len(self.attributes) < MAX_ATTRIBUTES:
                self.attributes[name] = value

    def _track_activity(self, kind: str, at: datetime, properties: dict[str, str]) -> None:
        ts = at.timestamp()
        day = int(ts // 86_400)
        entry = self.kind_activity.get(kind)
        if entry is None:
            entry = self.kind_activity[kind] = [ts]
        elif ts > entry[0]:
            entry[0] = ts
        _bucket_add(entry, KIND_BUCKETS, day, 1, 0)
        for name, raw in properties.items():
            # Interned: every lead holding "page_view\x1fcampaign" shares one string.
            key = sys.intern(f"{kind}\x1f{name}")
            value = as_number(raw)
            if value is None:
                room = key in self.property_text or len(self.property_text) < MAX_PROPERTY_STATS
                if room and ts >= entry[0]:  # the kind's latest activity: its latest text
                    self.property_text[key] = sys.intern(str(raw)[:MAX_TEXT])
                continue
            stats = self.property_stats.get(key)
            if stats is None:
                if len(self.property_stats) >= MAX_PROPERTY_STATS:
                    continue
                stats = self.property_stats[key] = [0, 0.0, None, None, None]
            add_to_property_stats(stats, ts, day, value)

    def _touch(self, occurred_at: datetime, outcome: bool = False) -> None:
        if occurred_at > self.last_event_at:
            self.last_event_at = occurred_at
        if not outcome and occurred_at > self.last_open_event_at:
            self.last_open_event_at = occurred_at

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


# -- running activity state (flat lists and dicts: small, and cheap to snapshot) -----------

# A numeric property's stats: n, sum, max, last value, last time (epoch s), then buckets.
N, SUM, MAX, LAST, LAST_AT = range(5)
PROPERTY_BUCKETS = 5  # where the buckets start in a property's stats
KIND_BUCKETS = 1  # ... and in a kind's entry, after its last time


def as_number(raw: str) -> float | None:
    """A property value as a finite number, or None when it is text."""
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def add_to_property_stats(stats: list[Any], ts: float, day: int, value: float) -> None:
    stats[N] += 1
    stats[SUM] += value
    stats[MAX] = value if stats[MAX] is None else max(stats[MAX], value)
    if stats[LAST_AT] is None or ts >= stats[LAST_AT]:
        stats[LAST_AT] = ts
        stats[LAST] = value
    _bucket_add(stats, PROPERTY_BUCKETS, day, 1, value)


def _bucket_add(lst: list[Any], start: int, day: int, n: int, value: float) -> None:
    """Add to the bucket of ``day`` among ``lst[start:]``, triples [day, n, sum, ...].

    Buckets are in day order, only those of the WINDOW_DAYS days up to the newest. Flat,
    not a list per bucket, and not a dict keyed by day: snapshots go through JSON, whose
    object keys are strings.
    """
    newest = lst[-3] if len(lst) > start else day
    if day <= newest - WINDOW_DAYS:
        return  # too old for any window
    i = len(lst) - 3
    while i >= start and lst[i] > day:
        i -= 3
    if i >= start and lst[i] == day:
        lst[i + 1] += n
        lst[i + 2] += value
        return
    lst[i + 3 : i + 3] = [day, n, value]
    while lst[start] <= lst[-3] - WINDOW_DAYS:
        del lst[start : start + 3]


def window_sums(lst: list[Any], start: int, now: datetime, window_days: int) -> tuple[float, float]:
    """(count, sum) over the buckets in ``lst[start:]`` of the ``window_days`` days up to
    ``now``."""
    today = int(now.timestamp() // 86_400)
    n = total = 0.0
    for i in range(start, len(lst), 3):
        if today - window_days < lst[i] <= today:
            n += lst[i + 1]
            total += lst[i + 2]
    return n, total


def buckets(lst: list[Any], start: int) -> int:
    """How many day buckets ``lst[start:]`` holds."""
    return (len(lst) - start) // 3
