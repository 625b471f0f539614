"""Avro records <-> domain lead-events, with validation.

Decoding the wire format lives in wire.py; this module only maps a decoded
Avro record to the domain's LeadEvent and back.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from domain.events import PROFILE_FIELDS, ActivityKind, EventType, LeadEvent

MAX_ID_LENGTH = 128


class ValidationError(ValueError):
    """A decoded lead-event that the engine refuses to apply."""


def _as_utc(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int):
        return datetime.fromtimestamp(value / 1000.0, tz=UTC)
    raise ValidationError(f"occurred_at is not a timestamp: {value!r}")


def record_to_event(record: dict[str, Any]) -> LeadEvent:
    """Map a decoded lead-event record to the domain, or raise ValidationError."""
    for key in ("event_id", "org_id", "lead_id"):
        value = record.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ValidationError(f"{key} is missing or empty")
        if len(value) > MAX_ID_LENGTH:
            raise ValidationError(f"{key} is longer than {MAX_ID_LENGTH} characters")
    try:
        event_type = EventType(record["event_type"])
    except (KeyError, ValueError) as exc:
        raise ValidationError(f"unknown event_type {record.get('event_type')!r}") from exc
    activity = record.get("activity")
    kind: ActivityKind | None = None
    properties: dict[str, str] = {}
    if event_type is EventType.ACTIVITY_RECORDED:
        if not activity:
            raise ValidationError("ActivityRecorded without an activity")
        try:
            kind = ActivityKind(activity["kind"])
        except ValueError:
            kind = ActivityKind.OTHER
        properties = dict(activity.get("properties") or {})
    profile = {f: record[f] for f in PROFILE_FIELDS if record.get(f) is not None}
    return LeadEvent(
        event_id=record["event_id"],
        event_type=event_type,
        org_id=record["org_id"],
        lead_id=record["lead_id"],
        occurred_at=_as_utc(record.get("occurred_at")),
        profile=profile,
        activity_kind=kind,
        activity_properties=properties,
        reason=record.get("reason"),
    )


def event_to_record(ev: LeadEvent) -> dict[str, Any]:
    """The Avro record for a domain lead-event (used by producers and tests)."""
    record: dict[str, Any] = {f: ev.profile.get(f) for f in PROFILE_FIELDS}
    record.update(
        event_id=ev.event_id,
        event_type=str(ev.event_type),
        org_id=ev.org_id,
        lead_id=ev.lead_id,
        occurred_at=ev.occurred_at,
        activity=(
            {"kind": str(ev.activity_kind), "properties": dict(ev.activity_properties)}
            if ev.activity_kind is not None
            else None
        ),
        reason=ev.reason,
    )
    return record
