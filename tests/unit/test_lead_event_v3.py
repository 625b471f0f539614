"""lead_event v3: the org's own fields (``attributes``) from producer to domain."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from typing import Any

import fastavro

from adapters.schema_compat import incompatibilities, versioned_files
from streams.codec import event_to_record, record_to_event
from streams.wire import (
    LEAD_EVENT_SCHEMA,
    LEAD_EVENT_SCHEMA_NEWEST,
    LEAD_EVENT_SCHEMA_V2,
    LEAD_EVENT_SCHEMA_V3,
    SCHEMA_DIR,
)
from tests.support.factories import activity, created

V1 = json.loads(LEAD_EVENT_SCHEMA.read_text())
V2 = json.loads(LEAD_EVENT_SCHEMA_V2.read_text())
V3 = json.loads(LEAD_EVENT_SCHEMA_V3.read_text())
ATTRIBUTES = {"occupation": "working professional", "specialization": "finance management"}


def _round_trip(writer: Any, reader: Any, record: dict[str, Any]) -> Any:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(writer), record)
    buf.seek(0)
    return fastavro.schemaless_reader(
        buf, fastavro.parse_schema(writer), fastavro.parse_schema(reader)
    )


def test_the_engines_producers_write_the_newest_version() -> None:
    # A v4 must move LEAD_EVENT_SCHEMA_NEWEST (and so what `produce` / `import` write).
    assert versioned_files(SCHEMA_DIR)["lead_event"][-1] == LEAD_EVENT_SCHEMA_NEWEST
    assert LEAD_EVENT_SCHEMA_NEWEST == LEAD_EVENT_SCHEMA_V3


def test_v3_is_v2_plus_a_map_of_strings_defaulting_to_empty() -> None:
    names = [f["name"] for f in V3["fields"]]
    assert names == [f["name"] for f in V2["fields"]] + ["attributes"]
    attributes = V3["fields"][-1]
    assert attributes["type"] == {"type": "map", "values": "string"}
    assert attributes["default"] == {}
    assert incompatibilities("BACKWARD_TRANSITIVE", V3, [V1, V2]) == []


def test_attributes_round_trip_through_v3_to_the_domain() -> None:
    for ev in (created(), replace(created(), attributes=ATTRIBUTES)):
        read = record_to_event(_round_trip(V3, V3, event_to_record(ev)), now=ev.occurred_at)
        assert read == ev


def test_v1_and_v2_records_read_as_v3_have_no_attributes() -> None:
    ev = replace(created(), attributes=ATTRIBUTES)
    for old in (V1, V2):
        read = record_to_event(_round_trip(old, V3, event_to_record(ev)), now=ev.occurred_at)
        assert read.attributes == {}
        assert read.profile == ev.profile  # v1's employees and v2's company_size alike
        # Read with the schema it was written with (the catalog's fast path): the same.
        same = record_to_event(_round_trip(old, old, event_to_record(ev)), now=ev.occurred_at)
        assert same == read


def test_activities_round_trip_unchanged() -> None:
    ev = activity()
    assert record_to_event(_round_trip(V3, V3, event_to_record(ev)), now=ev.occurred_at) == ev
