"""A lead's past, read from its own events: the version current at an instant, every
score change with what caused it, and what changed between two instants. Pure.

Time here is when the engine *stored* an event (the library's ``timestamp`` on every
domain event), so "as of T" is what the engine said at T: the lead at the last version
stored at or before T. Within one lead versions are stored in order; a clock that steps
back between two writers cannot make a later version count as earlier, because a
version counts from the latest time of it and every version before it (a prefix).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from domain.lead import Lead

LEAD_EVENTS = (
    Lead.LeadCreated,
    Lead.LeadUpdated,
    Lead.ActivityRecorded,
    Lead.LeadConverted,
    Lead.LeadDisqualified,
)
DECAY_PREFIX = "decay:"
REPLAY_PREFIX = "replay:"
REST = "rest"  # the diff's name for the change its named factors do not carry


def version_at(events: Sequence[Any], at: datetime) -> int | None:
    """The version current at ``at``: the last of ``events`` (one lead's, in version order)
    stored at or before it, counting each from the latest time up to it; None: not yet
    stored at ``at``."""
    version: int | None = None
    reached: datetime | None = None
    for ev in events:
        reached = ev.timestamp if reached is None else max(reached, ev.timestamp)
        if reached > at:
            break
        version = ev.originator_version
    return version


def prefix(events: Sequence[Any], version: int) -> list[Any]:
    return [ev for ev in events if ev.originator_version <= version]


def last_score(events: Sequence[Any]) -> Any | None:
    """The latest LeadScored among ``events``."""
    for ev in reversed(events):
        if isinstance(ev, Lead.LeadScored):
            return ev
    return None


def lead_event(ev: Any) -> dict[str, Any]:
    """A stored lead-event as the timeline names it (no profile values: those are the
    lead page's, not the trail's)."""
    kind = getattr(ev, "kind", None)
    occurred = getattr(ev, "occurred_at", None) or getattr(ev, "created_at", None)
    return {
        "version": ev.originator_version,
        "event_id": ev.source_event_id,
        "type": type(ev).__name__,
        "activity": kind,
        "occurred_at": occurred,
        "recorded_at": ev.timestamp,
    }


def cause_kind(caused_by: str) -> str:
    if caused_by.startswith(DECAY_PREFIX):
        return "decay"
    if caused_by.startswith(REPLAY_PREFIX):
        return "replay"
    return "lead_event"


def score_change(ev: Any, since: list[dict[str, Any]], by_id: dict[str, Any]) -> dict[str, Any]:
    cause = by_id.get(ev.caused_by_event_id)
    return {
        "version": ev.originator_version,
        "recorded_at": ev.timestamp,
        "score": ev.score,
        "previous_score": ev.previous_score,
        "grade": ev.grade,
        "previous_grade": ev.previous_grade,
        "stage": ev.stage,
        "fit": ev.components.get("fit"),
        "engagement": ev.components.get("engagement"),
        "model_version": ev.model_version,
        "rules_version": ev.rules_version,
        "factors": ev.factors,
        "cause": {
            "kind": cause_kind(ev.caused_by_event_id),
            "event_id": ev.caused_by_event_id,
            "type": cause["type"] if cause else None,
            "activity": cause["activity"] if cause else None,
            "occurred_at": cause["occurred_at"] if cause else None,
        },
        # Every lead-event applied since the previous score: a batch of a lead's events
        # is scored once, named after its last.
        "events": since,
    }


def timeline(events: Sequence[Any]) -> list[dict[str, Any]]:
    """Every score change of one lead (its events in version order), oldest first."""
    out: list[dict[str, Any]] = []
    by_id: dict[str, dict[str, Any]] = {}
    since: list[dict[str, Any]] = []
    for ev in events:
        if isinstance(ev, LEAD_EVENTS):
            if ev.source_event_id is None:  # a lead opened by another event: that one follows
                continue
            entry = lead_event(ev)
            by_id[ev.source_event_id] = entry
            since.append(entry)
        elif isinstance(ev, Lead.LeadScored):
            out.append(score_change(ev, since, by_id))
            since = []
    return out


def _contributions(scored: Any | None) -> dict[str, tuple[str, float]]:
    if scored is None:
        return {}
    return {
        str(f["feature"]): (str(f.get("label", f["feature"])), float(f["contribution"]))
        for f in scored.factors
    }


def diff(events: Sequence[Any], v_from: int, v_to: int) -> dict[str, Any]:
    """What changed from version ``v_from`` to ``v_to`` (``v_from`` <= ``v_to``): the
    events stored in between, the score change, and each named factor's change.

    A score keeps only its top factors, so the named changes plus ``rest`` (smaller
    factors and the reference lead's own change) add up to the score change exactly.
    """
    before = last_score(prefix(events, v_from))
    after = last_score(prefix(events, v_to))
    between = [ev for ev in events if v_from < ev.originator_version <= v_to]
    score_from = before.score if before is not None else None
    score_to = after.score if after is not None else None
    change = (score_to or 0.0) - (score_from or 0.0)
    old, new = _contributions(before), _contributions(after)
    factors = []
    for feature in sorted(old.keys() | new.keys()):
        label = (new.get(feature) or old[feature])[0]
        was = old[feature][1] if feature in old else 0.0
        now = new[feature][1] if feature in new else 0.0
        factors.append(
            {"feature": feature, "label": label, "from": was, "to": now, "change": now - was}
        )
    factors.sort(key=lambda f: -abs(f["change"]))
    named = sum(f["change"] for f in factors)
    return {
        "from_version": v_from,
        "to_version": v_to,
        "score_from": score_from,
        "score_to": score_to,
        "score_change": change,
        "grade_from": before.grade if before is not None else None,
        "grade_to": after.grade if after is not None else None,
        "factors": factors,
        REST: change - named,
        "events": [lead_event(ev) for ev in between if isinstance(ev, LEAD_EVENTS)],
        "scores": [
            {"version": ev.originator_version, "score": ev.score, "recorded_at": ev.timestamp}
            for ev in between
            if isinstance(ev, Lead.LeadScored)
        ],
    }
