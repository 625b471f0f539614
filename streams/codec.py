"""Avro records <-> domain lead-events, with validation.

Decoding the wire format lives in wire.py; this module only maps a decoded
Avro record to the domain's LeadEvent and back.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from domain.events import ORG_ID_PATTERN, PROFILE_FIELDS, ActivityKind, EventType, LeadEvent

MAX_ID_LENGTH = 128
MAX_STRING_LENGTH = 1_000
MAX_PROPERTIES = 50
# The sinks' column types: PostgreSQL `leads.employees integer` is the narrowest (int32).
MAX_EMPLOYEES = 2**31 - 1
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
# Upstream clocks drift; a day is generous, more is a producer bug (ms vs s, years).
MAX_CLOCK_SKEW = timedelta(days=1)
_ID_FIELDS = ("event_id", "org_id", "lead_id")
_EVENT_TYPES = frozenset(str(t) for t in EventType)
# Every optional text field of any lead_event version (v2 added campaign, v1 has employees
# where v2+ have company_size; both are checked as the integer they are).
_TEXT_FIELDS = tuple(f for f in PROFILE_FIELDS if f != "employees") + ("campaign", "reason")
_SIZE_FIELDS = ("employees", "company_size")
# C0 and C1 control characters except tab: PostgreSQL text refuses NUL, and newlines or
# escapes in a name break logs, CSV exports and terminals downstream.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


class ValidationError(ValueError):
    """A decoded lead-event that the engine refuses to apply."""


def _as_utc(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value / 1000.0, tz=UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise ValidationError(f"occurred_at is out of range: {value!r}") from exc
    raise ValidationError(f"occurred_at is not a timestamp: {value!r}")


def validate(record: Any, *, now: datetime | None = None) -> None:
    """Refuse a decoded record the engine must not apply; raises ValidationError.

    Kept apart from the field mapping so every schema version passes the same gate.
    ``now`` bounds ``occurred_at`` (defaults to the wall clock).
    """
    if not isinstance(record, dict):
        raise ValidationError("a lead-event must be a record")
    for key in _ID_FIELDS:
        value = record.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ValidationError(f"{key} is missing or empty")
        if len(value) > MAX_ID_LENGTH:
            raise ValidationError(f"{key} is longer than {MAX_ID_LENGTH} characters")
        if not value.isprintable():
            raise ValidationError(f"{key} has unprintable characters")
    if not ORG_ID_PATTERN.match(record["org_id"]):
        raise ValidationError("org_id must be letters, digits, '.', '_' or '-'")
    event_type = record.get("event_type")
    if not isinstance(event_type, str) or event_type not in _EVENT_TYPES:
        raise ValidationError(f"unknown event_type {event_type!r}")
    occurred_at = _as_utc(record.get("occurred_at"))
    latest = (now or datetime.now(UTC)) + MAX_CLOCK_SKEW
    if not EARLIEST <= occurred_at <= latest:
        raise ValidationError(
            f"occurred_at {occurred_at.isoformat()} is outside [{EARLIEST.date()}, now + 1 day]"
        )
    for key in _TEXT_FIELDS:
        _check_text(key, record.get(key))
    for key in _SIZE_FIELDS:
        _check_size(key, record.get(key))
    _validate_attributes(record.get("attributes"))
    activity = record.get("activity")
    if activity is None:
        return
    if not isinstance(activity, dict):
        raise ValidationError("activity must be a record")
    if not isinstance(activity.get("kind"), str):
        raise ValidationError("activity.kind is missing")
    properties = activity.get("properties")
    if properties is None:
        return
    if not isinstance(properties, dict):
        raise ValidationError("activity.properties must be a map")
    if len(properties) > MAX_PROPERTIES:
        raise ValidationError(f"activity.properties has more than {MAX_PROPERTIES} entries")
    for name, value in properties.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise ValidationError("activity.properties must map strings to strings")
        if len(name) > MAX_STRING_LENGTH or len(value) > MAX_STRING_LENGTH:
            raise ValidationError(
                f"an activity property is longer than {MAX_STRING_LENGTH} characters"
            )
        if _CONTROL.search(name) or _CONTROL.search(value):
            raise ValidationError("an activity property has control characters")


def _check_text(key: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise ValidationError(f"{key} must be a string, not {type(value).__name__}")
    if len(value) > MAX_STRING_LENGTH:
        raise ValidationError(f"{key} is longer than {MAX_STRING_LENGTH} characters")
    if _CONTROL.search(value):
        raise ValidationError(f"{key} has control characters")


def _check_size(key: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationError(f"{key} must be an integer, not {type(value).__name__}")
    if not 0 <= value <= MAX_EMPLOYEES:
        raise ValidationError(f"{key} {value} is outside [0, {MAX_EMPLOYEES}]")


def _validate_attributes(attributes: Any) -> None:
    # v1/v2 records have no attributes; v3 gives {} when the producer set none.
    if attributes is None:
        return
    if not isinstance(attributes, dict):
        raise ValidationError("attributes must be a map")
    if len(attributes) > MAX_PROPERTIES:
        raise ValidationError(f"attributes has more than {MAX_PROPERTIES} entries")
    for name, value in attributes.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise ValidationError("attributes must map strings to strings")
        if not name.strip():
            raise ValidationError("an attribute name is empty")
        if len(name) > MAX_STRING_LENGTH or len(value) > MAX_STRING_LENGTH:
            raise ValidationError(f"an attribute is longer than {MAX_STRING_LENGTH} characters")
        # Attributes become feature names, vocabularies and explanation text: no control
        # characters (NUL breaks PostgreSQL text, newlines break logs and CSVs).
        if not name.isprintable() or not value.isprintable():
            raise ValidationError(f"attribute {name[:40]!r} has control characters")


def record_to_event(record: dict[str, Any], *, now: datetime | None = None) -> LeadEvent:
    """Map a decoded lead-event record to the domain, or raise ValidationError."""
    validate(record, now=now)
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
    if record.get("company_size") is not None:  # lead_event v2 renamed employees
        profile["employees"] = record["company_size"]
    attributes: dict[str, str] = {}
    if event_type in (EventType.LEAD_CREATED, EventType.LEAD_UPDATED):
        attributes = dict(record.get("attributes") or {})  # v1/v2 carry none
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
        attributes=attributes,
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
        # Written under both names: v1 has employees, v2+ company_size (fastavro ignores
        # the key a schema does not have).
        company_size=ev.profile.get("employees"),
        attributes=dict(ev.attributes),
    )
    return record
