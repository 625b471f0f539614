"""What validation lets through is what every sink can hold (issue 15, item 2)."""

from __future__ import annotations

import io
import json
from typing import Any

import fastavro
import pytest

from streams.codec import (
    MAX_EMPLOYEES,
    MAX_STRING_LENGTH,
    ValidationError,
    event_to_record,
    validate,
)
from streams.wire import LEAD_EVENT_SCHEMA_V3, SerializationError
from tests.support.factories import activity, created, outcome
from tests.support.wire import NOW

TEXT_FIELDS = (
    "email", "first_name", "last_name", "company", "title", "industry", "country", "source",
    "campaign", "reason",
)  # fmt: skip


def lead() -> dict[str, Any]:
    return event_to_record(created(at=NOW))


@pytest.mark.parametrize("field", TEXT_FIELDS)
@pytest.mark.parametrize("bad", ["CEO\x00", "a\nb", "\x1b[31m", "x\x7f", "x\x85"])
def test_control_characters_are_refused_in_every_text_field(field: str, bad: str) -> None:
    record = lead()
    record[field] = bad
    with pytest.raises(ValidationError, match=f"{field} has control characters"):
        validate(record, now=NOW)


@pytest.mark.parametrize("field", TEXT_FIELDS)
def test_tab_and_unicode_pass(field: str) -> None:
    record = lead()
    record[field] = "Zoë\tСтепанова 名前 \u200c"
    validate(record, now=NOW)


@pytest.mark.parametrize("field", TEXT_FIELDS)
def test_text_at_the_limit_passes_and_one_over_is_refused(field: str) -> None:
    record = lead()
    record[field] = "x" * MAX_STRING_LENGTH
    validate(record, now=NOW)
    record[field] = "x" * (MAX_STRING_LENGTH + 1)
    with pytest.raises(ValidationError, match="longer than"):
        validate(record, now=NOW)


@pytest.mark.parametrize("field", TEXT_FIELDS)
def test_text_of_another_type_is_refused(field: str) -> None:
    record = lead()
    record[field] = 12
    with pytest.raises(ValidationError, match=f"{field} must be a string"):
        validate(record, now=NOW)


@pytest.mark.parametrize("field", ["employees", "company_size"])
@pytest.mark.parametrize(
    ("value", "ok"),
    [(0, True), (MAX_EMPLOYEES, True), (-1, False), (MAX_EMPLOYEES + 1, False), (2**63, False),
     ("800", False), (True, False), (1.5, False)],
)  # fmt: skip
def test_company_size_fits_an_int32_column(field: str, value: object, ok: bool) -> None:
    record = lead()
    record[field] = value
    if ok:
        validate(record, now=NOW)
    else:
        with pytest.raises(ValidationError, match=field):
            validate(record, now=NOW)


@pytest.mark.parametrize("where", ["name", "value"])
def test_activity_property_control_characters_are_refused(where: str) -> None:
    record = event_to_record(activity(at=NOW))
    name, value = ("url\x00", "/p") if where == "name" else ("url", "/p\x00")
    record["activity"]["properties"] = {name: value}
    with pytest.raises(ValidationError, match="activity property has control characters"):
        validate(record, now=NOW)


def test_reason_nul_is_refused() -> None:
    record = event_to_record(outcome(at=NOW))
    record["reason"] = "lost\x00"
    with pytest.raises(ValidationError, match="reason has control characters"):
        validate(record, now=NOW)


def test_invalid_utf8_is_a_serialization_error_not_a_crash() -> None:
    from streams.wire import SchemaCatalog

    schema = fastavro.parse_schema(json.loads(LEAD_EVENT_SCHEMA_V3.read_text()))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, {**lead(), "title": "CE\u00e9"})
    body = buf.getvalue().replace("CEé".encode(), b"CE\xff")
    catalog = SchemaCatalog("http://127.0.0.1:9", reader_schemas={})
    catalog._decoders[5] = (schema, None)  # the id's schema, as if fetched once
    with pytest.raises(SerializationError, match="undecodable"):
        catalog.decode(b"\x00\x00\x00\x00\x05" + body)
