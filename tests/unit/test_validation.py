"""Validation of decoded lead-events, and what the processor makes of bad messages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from domain.events import LeadEvent
from streams.codec import (
    MAX_PROPERTIES,
    MAX_STRING_LENGTH,
    ValidationError,
    event_to_record,
    record_to_event,
    validate,
)
from streams.dlq import (
    FIRST_FAILURE_AT,
    REASON,
    REPLAYED_AT,
    SOURCE_OFFSET,
    SOURCE_TOPIC,
    DeadLetter,
    RawMessage,
    Reason,
    parse_ref,
)
from streams.processor import BatchStats, decode_message
from tests.support.factories import T0, activity, created, outcome
from tests.support.wire import NOW, LocalCatalog, Orgs, encode


def good() -> dict[str, Any]:
    return event_to_record(activity())


def test_valid_records_pass() -> None:
    for ev in (created(), activity(), outcome()):
        validate(event_to_record(ev), now=NOW)
        assert record_to_event(event_to_record(ev), now=NOW) == ev


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("event_id", None, "missing"),
        ("event_id", "   ", "empty"),
        ("org_id", "o" * 129, "longer"),
        ("lead_id", "lead\x00-1", "unprintable"),
        ("lead_id", "lead\n1", "unprintable"),
        ("event_id", 42, "missing"),
        ("event_type", "LeadExploded", "event_type"),
        ("event_type", None, "event_type"),
        ("occurred_at", None, "not a timestamp"),
        ("occurred_at", "2026-01-01", "not a timestamp"),
        ("occurred_at", datetime(1999, 12, 31, 23, 59, tzinfo=UTC), "outside"),
        ("occurred_at", NOW + timedelta(days=1, seconds=1), "outside"),
        ("occurred_at", 10**20, "out of range"),
        ("company", "c" * (MAX_STRING_LENGTH + 1), "company is longer"),
        ("reason", "r" * (MAX_STRING_LENGTH + 1), "reason is longer"),
        ("activity", "page_view", "activity must be a record"),
        # ":" would let one tenant's Redis keys collide with another's.
        ("org_id", "a:lead:x", "org_id must be"),
        ("org_id", "-org", "org_id must be"),
    ],
)
def test_invalid_records_are_refused(field: str, value: object, why: str) -> None:
    record = good()
    record[field] = value
    with pytest.raises(ValidationError, match=why):
        validate(record, now=NOW)


def test_timestamps_at_the_edges_pass() -> None:
    for at in (datetime(2000, 1, 1, tzinfo=UTC), NOW + timedelta(days=1)):
        record = good()
        record["occurred_at"] = at
        validate(record, now=NOW)


@pytest.mark.parametrize(
    ("properties", "why"),
    [
        ({f"k{i}": "v" for i in range(MAX_PROPERTIES + 1)}, "more than"),
        ({"url": "u" * (MAX_STRING_LENGTH + 1)}, "longer"),
        ({"u" * (MAX_STRING_LENGTH + 1): "x"}, "longer"),
        ({"n": 3}, "strings to strings"),
        (["a"], "must be a map"),
    ],
)
def test_oversized_or_malformed_properties_are_refused(properties: object, why: str) -> None:
    record = good()
    record["activity"] = {"kind": "page_view", "properties": properties}
    with pytest.raises(ValidationError, match=why):
        validate(record, now=NOW)


def test_fifty_properties_pass() -> None:
    record = good()
    record["activity"] = {
        "kind": "page_view",
        "properties": {f"k{i}": "v" * MAX_STRING_LENGTH for i in range(MAX_PROPERTIES)},
    }
    validate(record, now=NOW)


@pytest.mark.parametrize(
    ("attributes", "why"),
    [
        ({f"k{i}": "v" for i in range(MAX_PROPERTIES + 1)}, "more than"),
        ({"occupation": "o" * (MAX_STRING_LENGTH + 1)}, "longer"),
        ({"o" * (MAX_STRING_LENGTH + 1): "student"}, "longer"),
        ({"employees_band": 3}, "strings to strings"),
        ({"  ": "x"}, "name is empty"),
        (["occupation"], "must be a map"),
        ({"occupation": "student\x00"}, "control characters"),
        ({"occu\x00pation": "student"}, "control characters"),
        ({"city": "Mumbai\nThane"}, "control characters"),
        ({"tags\x1b[31m": "x"}, "control characters"),
    ],
)
def test_oversized_or_malformed_attributes_are_refused(attributes: object, why: str) -> None:
    record = event_to_record(created())
    record["attributes"] = attributes
    with pytest.raises(ValidationError, match=why):
        validate(record, now=NOW)


def test_attributes_at_the_limits_pass_and_reach_the_domain() -> None:
    attributes = {f"k{i}": "v" * MAX_STRING_LENGTH for i in range(MAX_PROPERTIES)}
    attributes["occupation"] = "working professional – Pune (ünïcode)"
    del attributes["k0"]
    ev = LeadEvent(**{**_fields(created()), "attributes": attributes})
    record = event_to_record(ev)
    validate(record, now=NOW)
    assert record_to_event(record, now=NOW).attributes == attributes


def test_records_without_attributes_decode_to_no_attributes() -> None:
    # lead_event v1 and v2 have no attributes field; v3 defaults it to {}.
    record = event_to_record(created())
    del record["attributes"]
    assert record_to_event(record, now=NOW).attributes == {}
    record["attributes"] = None
    assert record_to_event(record, now=NOW).attributes == {}


def test_attributes_are_the_profile_events_own() -> None:
    # Only LeadCreated / LeadUpdated carry the org's fields; an activity's are ignored.
    record = event_to_record(activity())
    record["attributes"] = {"occupation": "student"}
    assert record_to_event(record, now=NOW).attributes == {}


def _fields(ev: LeadEvent) -> dict[str, Any]:
    return {name: getattr(ev, name) for name in LeadEvent.__dataclass_fields__}


def test_not_a_record_is_refused() -> None:
    with pytest.raises(ValidationError):
        validate(["event_id"], now=NOW)  # type: ignore[arg-type]


def msg(value: bytes | None) -> RawMessage:
    return RawMessage(value, key=b"lead-1", topic="lead-events", partition=2, offset=41)


@pytest.mark.parametrize(
    ("value", "reason", "error_class"),
    [
        (None, Reason.UNDECODABLE, "SerializationError"),
        (b"garbage", Reason.UNDECODABLE, "SerializationError"),
        (b"\x00\x00\x00\x00\x07\xff\xff", Reason.UNDECODABLE, "SerializationError"),
        (encode(good(), schema_id=999), Reason.UNKNOWN_SCHEMA, "UnknownSchemaError"),
        (
            encode({**good(), "occurred_at": NOW + timedelta(days=30)}),
            Reason.INVALID,
            "ValidationError",
        ),
        (encode({**good(), "org_id": "nobody"}), Reason.UNKNOWN_ORG, "UnknownOrgError"),
    ],
)
def test_each_bad_message_becomes_a_dead_letter_with_its_reason(
    value: bytes | None, reason: Reason, error_class: str
) -> None:
    result = decode_message(msg(value), LocalCatalog(), now=NOW, orgs=Orgs("org-1"))  # type: ignore[arg-type]
    assert isinstance(result, DeadLetter)
    assert (result.reason, result.error_class) == (reason, error_class)
    assert result.message.value == value and result.detail


def test_a_good_message_of_a_registered_org_decodes() -> None:
    ev = activity()
    result = decode_message(
        msg(encode(event_to_record(ev))),
        LocalCatalog(),
        now=NOW,
        orgs=Orgs("org-1"),  # type: ignore[arg-type]
    )
    assert result == ev


def test_without_a_registry_any_org_is_accepted() -> None:
    result = decode_message(msg(encode({**good(), "org_id": "nobody"})), LocalCatalog(), now=NOW)
    assert isinstance(result, LeadEvent) and result.org_id == "nobody"


def test_transient_errors_escape_to_retry_the_batch() -> None:
    class Away:
        def decode(self, value: bytes | None) -> dict[str, Any]:
            raise ConnectionError("registry away")

    with pytest.raises(ConnectionError):
        decode_message(msg(b"\x00\x00\x00\x00\x07"), Away(), now=NOW)


def test_dead_letter_headers_keep_the_original_and_the_first_failure() -> None:
    original = RawMessage(
        b"v",
        key=b"k",
        headers=(("trace", b"abc"),),
        topic="lead-events",
        partition=1,
        offset=9,
    )
    first = DeadLetter(original, Reason.UNKNOWN_ORG, "org 'x' is not registered", "X")
    h1 = first.headers(T0)
    assert h1[0] == ("trace", b"abc")
    d1 = dict(h1)
    assert d1[REASON] == b"unknown_org" and d1[SOURCE_TOPIC] == b"lead-events"
    assert d1[SOURCE_OFFSET] == b"9" and d1[FIRST_FAILURE_AT] == T0.isoformat().encode()

    # Replayed (from partition 0 offset 3 of lead-events, say) and failing again.
    replayed = RawMessage(
        b"v",
        key=b"k",
        headers=(*h1, (REPLAYED_AT, b"2026-01-06")),
        topic="lead-events",
        partition=0,
        offset=500,
    )
    h2 = DeadLetter(replayed, Reason.FAILED, "boom", "RuntimeError").headers(T0 + timedelta(1))
    d2 = dict(h2)
    assert d2[REASON] == b"failed" and d2[FIRST_FAILURE_AT] == T0.isoformat().encode()
    assert (d2[SOURCE_TOPIC], d2[SOURCE_OFFSET]) == (b"lead-events", b"9")
    assert d2[REPLAYED_AT] == b"2026-01-06"
    assert [k for k, _ in h2].count(REASON) == 1  # no stale reason carried along


def test_dead_letter_refs() -> None:
    assert parse_ref("17") == (0, 17) and parse_ref("2:17") == (2, 17)
    with pytest.raises(ValueError):
        parse_ref("x")


def test_stats_dead_lettered_is_invalid_plus_failed_and_totals_keep_no_letters() -> None:
    letter = DeadLetter(msg(None), Reason.UNDECODABLE, "short", "SerializationError")
    batch = BatchStats(received=3, invalid=1, failed=1, applied=1, dead_letters=[letter])
    totals = BatchStats()
    totals.add(batch)
    assert totals.dead_lettered == 2 and totals.dead_letters == []
    assert totals.received == totals.applied + totals.duplicates + totals.dead_lettered
