import contextlib
import json

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.codec import ValidationError, event_to_record, record_to_event
from streams.wire import LEAD_EVENT_SCHEMA, SerializationError, encode, split_header
from tests.support.factories import activity, created

PARSED = fastavro.parse_schema(json.loads(LEAD_EVENT_SCHEMA.read_text()))


def test_confluent_wire_format_header() -> None:
    value = encode(42, PARSED, event_to_record(created()))
    assert value[0] == 0
    assert int.from_bytes(value[1:5], "big") == 42
    schema_id, body = split_header(value)
    assert schema_id == 42 and len(body) == len(value) - 5


@pytest.mark.parametrize("value", [None, b"", b"\x00\x00", b"\x01\x00\x00\x00\x01abc"])
def test_bad_headers_are_serialization_errors(value: bytes | None) -> None:
    with pytest.raises(SerializationError):
        split_header(value)


def test_record_round_trip_through_the_domain() -> None:
    for ev in (created(), activity()):
        assert record_to_event(event_to_record(ev)) == ev


@pytest.mark.parametrize(
    ("field", "value"),
    [("event_id", ""), ("org_id", None), ("lead_id", "x" * 500), ("event_type", "LeadExploded")],
)
def test_invalid_records_are_refused(field: str, value: object) -> None:
    record = event_to_record(created())
    record[field] = value
    with pytest.raises(ValidationError):
        record_to_event(record)


@given(st.binary(max_size=64))
def test_random_headers_never_escape_as_other_errors(value: bytes) -> None:
    with contextlib.suppress(SerializationError):
        split_header(value)
