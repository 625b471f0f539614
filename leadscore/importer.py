"""`leadscore import`: a CRM export (one row per lead) as lead-events on Kafka.

Each row becomes a LeadCreated (profile fields and attributes), page views built from
its visit and time-on-site columns, and its outcome (LeadConverted / LeadDisqualified;
none for an open lead). Event ids are uuid5 of org, lead id and the event's role, so
importing the same file again produces the same ids and the engine applies each once.

An export has no times for visits: with ``activities.mode: per_visit`` the row's visits
become that many page views spread evenly over the first ``spread_days`` after creation
(always before the outcome), each carrying its share of the seconds on site and the
pages per visit; ``summary`` makes one page view with the row's totals as properties.

A bad row is refused with its reason and skipped; it never stops the import.
"""

from __future__ import annotations

import csv
import hashlib
import math
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog
from confluent_kafka import Producer

from domain.events import ORG_ID_PATTERN, ActivityKind, EventType, LeadEvent
from leadscore.import_mapping import Mapping, MappingError
from streams.codec import ValidationError, event_to_record, validate
from streams.producer import produce_events
from streams.wire import AvroTopic

log = structlog.get_logger(__name__)
_NAMESPACE = uuid.UUID("6b1d2f0e-3c57-4a43-8f0e-5d8e1c2a9b74")
_MS = timedelta(milliseconds=1)


class RowRefusedError(ValueError):
    """One row the import cannot turn into lead-events; the message says why."""


@dataclass
class ImportReport:
    rows_read: int = 0
    leads: int = 0
    events_produced: int = 0
    delivery_failures: int = 0
    visits_capped: int = 0  # rows whose visits exceeded activities.max_visits
    refused: list[tuple[int, str]] = field(default_factory=list)  # (line, reason)

    def reasons(self) -> Counter[str]:
        return Counter(reason for _, reason in self.refused)


def import_csv(
    path: Path,
    mapping: Mapping,
    org_id: str,
    producer: Producer,
    topic: str,
    encoder: AvroTopic,
    *,
    now: datetime | None = None,
    on_row: Callable[[int], None] | None = None,
) -> ImportReport:
    """Read ``path``, produce every good row's lead-events, refuse the bad rows."""
    now = now or datetime.now(UTC)
    if not ORG_ID_PATTERN.match(org_id):
        raise MappingError(f"org id {org_id!r}: letters, digits, '.', '_' or '-'")
    if mapping.window_end is not None and mapping.window_end > now:
        raise MappingError("created_at.window_end is in the future")
    report = ImportReport()
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = mapping.columns() - set(reader.fieldnames or ())
        if missing:
            raise MappingError(f"{path.name} lacks column(s): {', '.join(sorted(missing))}")
        events = _events(reader, mapping, org_id, now, report, on_row)
        sent = produce_events(producer, topic, encoder, events)
    report.events_produced, report.delivery_failures = sent.sent, sent.failed
    log.info(
        "import.done",
        org_id=org_id,
        rows=report.rows_read,
        leads=report.leads,
        events=report.events_produced,
        refused=len(report.refused),
        failed=report.delivery_failures,
    )
    return report


def _events(
    reader: csv.DictReader[str],
    mapping: Mapping,
    org_id: str,
    now: datetime,
    report: ImportReport,
    on_row: Callable[[int], None] | None,
) -> Iterator[LeadEvent]:
    first_line: dict[str, int] = {}
    for number, row in enumerate(reader, start=1):
        line = reader.line_num
        report.rows_read += 1
        try:
            if None in row or None in row.values():
                raise RowRefusedError("the row's number of fields differs from the header's")
            lead_id = _lead_id(row, number, mapping)
            if lead_id in first_line:
                raise RowRefusedError(f"lead id repeats line {first_line[lead_id]}")
            built = lead_events(org_id, lead_id, row, mapping, now, report)
        except RowRefusedError as exc:
            report.refused.append((line, str(exc)))
        else:
            first_line[lead_id] = line
            report.leads += 1
            yield from built
        if on_row:
            on_row(report.rows_read)


def lead_events(
    org_id: str,
    lead_id: str,
    row: dict[str, str],
    mapping: Mapping,
    now: datetime,
    report: ImportReport | None = None,
) -> list[LeadEvent]:
    """The lead-events of one row, each passing the engine's validation; or
    RowRefusedError."""
    created = _created_at(org_id, lead_id, row, mapping)
    latest = mapping.window_end or now
    kind = mapping.outcome.kind(row[mapping.outcome.column])
    if kind is None:
        raise RowRefusedError(
            f"{mapping.outcome.column} {row[mapping.outcome.column].strip()[:40]!r} is not "
            "a converted, disqualified or open value of the mapping"
        )
    outcome_at = _outcome_at(row, mapping, created, latest) if kind != "open" else None
    events = [
        _event(
            org_id,
            lead_id,
            "created",
            EventType.LEAD_CREATED,
            created,
            profile=_profile(row, mapping),
            attributes={
                name: cell
                for name, column in mapping.attributes.items()
                if (cell := row[column].strip()).lower() not in mapping.blank
            },
        )
    ]
    end = outcome_at if outcome_at is not None else max(latest, created)
    events += _activities(org_id, lead_id, row, mapping, created, end, report)
    if outcome_at is not None:
        event_type = (
            EventType.LEAD_CONVERTED if kind == "converted" else EventType.LEAD_DISQUALIFIED
        )
        reason = f"{mapping.outcome.column}: {row[mapping.outcome.column].strip()}"
        events.append(_event(org_id, lead_id, "outcome", event_type, outcome_at, reason=reason))
    for ev in events:
        try:
            validate(event_to_record(ev), now=now)
        except ValidationError as exc:
            raise RowRefusedError(str(exc)) from exc
    return events


def _lead_id(row: dict[str, str], number: int, mapping: Mapping) -> str:
    if mapping.lead_id_column is not None:
        lead_id = row[mapping.lead_id_column].strip()
        if not lead_id:
            raise RowRefusedError(f"{mapping.lead_id_column} is empty")
        return lead_id
    if mapping.lead_id_derive == "row_number":
        return f"row-{number}"
    # row_hash: the same row gets the same id wherever it sits in the file.
    cells = "\x1f".join(row[c] for c in sorted(mapping.columns()))
    return "row-" + hashlib.sha256(cells.encode()).hexdigest()[:20]


def _created_at(org_id: str, lead_id: str, row: dict[str, str], mapping: Mapping) -> datetime:
    if mapping.created_column is not None:
        return _parse_time(row[mapping.created_column], mapping.created_column)
    assert mapping.window_end is not None  # the mapping requires one or the other
    # A fixed point of the window per lead: the same on every import of the file.
    digest = hashlib.sha256(f"{org_id}/{lead_id}".encode()).digest()
    share = (int.from_bytes(digest[:8], "big") + 1) / 2**64  # (0, 1]
    return _floor_ms(mapping.window_end - timedelta(days=mapping.window_days * share))


def _outcome_at(
    row: dict[str, str], mapping: Mapping, created: datetime, latest: datetime
) -> datetime:
    column = mapping.outcome.at_column
    if column is not None and row[column].strip().lower() not in mapping.blank:
        at = _parse_time(row[column], column)
        if at <= created:
            raise RowRefusedError(f"{column} is not after the lead's creation")
        return at
    # The export says that it converted, not when: after_days later, but never after the
    # window's end (or now): an outcome from the future would be refused.
    at = min(created + timedelta(days=mapping.outcome.after_days), latest)
    return max(at, created + _MS)


def _activities(
    org_id: str,
    lead_id: str,
    row: dict[str, str],
    mapping: Mapping,
    created: datetime,
    end: datetime,
    report: ImportReport | None,
) -> list[LeadEvent]:
    spec = mapping.activities
    if spec.mode == "none" or spec.visits is None:
        return []
    visits = _number(row, spec.visits, mapping)
    seconds = _number(row, spec.seconds_on_site, mapping)
    pages = _number(row, spec.pages_per_visit, mapping)
    n = round(visits)
    if n == 0 and seconds > 0:
        n = 1  # time on the site is at least one visit
    if n == 0:
        return []
    # Before the outcome, within spread_days of creation.
    span = min(timedelta(days=spec.spread_days), end - created)
    if spec.mode == "summary":
        props = {
            "visits": str(n),
            "seconds_on_site": _text(seconds),
            "pages_per_visit": _text(pages),
        }
        return [_view(org_id, lead_id, "summary", created + span / 2, props)]
    if n > spec.max_visits:
        n = spec.max_visits
        if report is not None:
            report.visits_capped += 1
    total = round(seconds)
    share, extra = divmod(total, n)
    views = []
    for k in range(n):
        at = created + _floor_delta(span * (k + 1) / (n + 1))
        props = {"seconds_on_site": str(share + (1 if k < extra else 0)), "pages": _text(pages)}
        views.append(_view(org_id, lead_id, f"visit-{k}", at, props))
    return views


def _profile(row: dict[str, str], mapping: Mapping) -> dict[str, str | int]:
    profile: dict[str, str | int] = {}
    for name, column in mapping.profile.items():
        cell = row[column].strip()
        if cell.lower() in mapping.blank:
            continue
        if name == "employees":
            value = _number(row, column, mapping)
            if value != int(value):
                raise RowRefusedError(f"{column} {cell[:40]!r} is not a whole number")
            profile[name] = int(value)
        else:
            profile[name] = cell
    return profile


def _number(row: dict[str, str], column: str | None, mapping: Mapping) -> float:
    if column is None:
        return 0.0
    cell = row[column].strip()
    if cell.lower() in mapping.blank:
        return 0.0
    try:
        value = float(cell)
    except ValueError:
        raise RowRefusedError(f"{column} {cell[:40]!r} is not a number") from None
    if not math.isfinite(value) or value < 0 or value >= 2**31:
        raise RowRefusedError(f"{column} {cell[:40]!r} is out of range")
    return value


def _parse_time(cell: str, column: str) -> datetime:
    try:
        at = datetime.fromisoformat(cell.strip())
    except ValueError:
        raise RowRefusedError(f"{column} {cell.strip()[:40]!r} is not an ISO 8601 time") from None
    return _floor_ms(at if at.tzinfo else at.replace(tzinfo=UTC))


def _text(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


def _floor_ms(at: datetime) -> datetime:
    # Avro timestamp-millis: sub-millisecond parts would not survive the round trip.
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def _floor_delta(delta: timedelta) -> timedelta:
    return delta // _MS * _MS


def _view(org_id: str, lead_id: str, role: str, at: datetime, props: dict[str, str]) -> LeadEvent:
    return _event(
        org_id,
        lead_id,
        role,
        EventType.ACTIVITY_RECORDED,
        at,
        activity_kind=ActivityKind.PAGE_VIEW,
        activity_properties=props,
    )


def _event(
    org_id: str,
    lead_id: str,
    role: str,
    event_type: EventType,
    at: datetime,
    *,
    profile: dict[str, str | int] | None = None,
    attributes: dict[str, str] | None = None,
    activity_kind: ActivityKind | None = None,
    activity_properties: dict[str, str] | None = None,
    reason: str | None = None,
) -> LeadEvent:
    return LeadEvent(
        event_id=str(uuid.uuid5(_NAMESPACE, f"{org_id}/{lead_id}/{role}")),
        event_type=event_type,
        org_id=org_id,
        lead_id=lead_id,
        occurred_at=at,
        profile=profile or {},
        activity_kind=activity_kind,
        activity_properties=activity_properties or {},
        reason=reason,
        attributes=attributes or {},
    )
