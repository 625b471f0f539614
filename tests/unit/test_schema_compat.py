"""Schema evolution: the BACKWARD rule, the committed schemas, and v1 read as v2.

The first test is the `make test` gate: a change under schemas/avro/ that breaks
BACKWARD compatibility with the previous version of a schema fails it.
"""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.utils import generate_many

from adapters.schema_compat import (
    InvalidSchemaError,
    can_read,
    check_directory,
    incompatibilities,
    parse,
    versioned_files,
)
from domain.events import ActivityKind
from streams.codec import event_to_record, record_to_event
from streams.wire import LEAD_EVENT_SCHEMA, LEAD_EVENT_SCHEMA_V2, SCHEMA_DIR
from tests.support.factories import activity, created

V1 = json.loads(LEAD_EVENT_SCHEMA.read_text())
V2 = json.loads(LEAD_EVENT_SCHEMA_V2.read_text())


def _field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in schema["fields"] if f["name"] == name)


def _round_trip(writer: Any, reader: Any, record: dict[str, Any]) -> Any:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(writer), record)
    buf.seek(0)
    return fastavro.schemaless_reader(
        buf, fastavro.parse_schema(writer), fastavro.parse_schema(reader)
    )


def test_every_committed_schema_is_backward_compatible_with_its_predecessors() -> None:
    assert check_directory(SCHEMA_DIR) == []
    names = [p.name for p in versioned_files(SCHEMA_DIR)["lead_event"]]
    # Every version from v1 on, none skipped (later versions are checked the same way).
    assert names == [f"lead_event.v{n}.avsc" for n in range(1, len(names) + 1)]
    assert len(names) >= 2


def test_every_committed_schema_reads_generated_data_of_its_predecessor() -> None:
    # The rule check's second opinion: fastavro's own resolution on generated records.
    for paths in versioned_files(SCHEMA_DIR).values():
        for old_path, new_path in zip(paths, paths[1:], strict=False):
            old, new = json.loads(old_path.read_text()), json.loads(new_path.read_text())
            for record in generate_many(fastavro.parse_schema(old), 200):
                _round_trip(old, new, record)


def test_the_check_rejects_a_breaking_change_in_the_schema_directory(tmp_path: Path) -> None:
    breaking = copy.deepcopy(V2)
    breaking["fields"].append({"name": "score_hint", "type": "int"})  # no default
    (tmp_path / "lead_event.v1.avsc").write_text(json.dumps(V1))
    (tmp_path / "lead_event.v2.avsc").write_text(json.dumps(V2))
    (tmp_path / "lead_event.v3.avsc").write_text(json.dumps(breaking))
    errors = check_directory(tmp_path)
    assert errors == [
        "lead_event.v3.avsc: BACKWARD: LeadEvent.score_hint: new field without a default"
    ]


def _v1_with(change: Any) -> dict[str, Any]:
    schema = copy.deepcopy(V1)
    change(schema)
    return schema


def _breaking_cases() -> dict[str, dict[str, Any]]:
    return {
        "new required field": _v1_with(
            lambda s: s["fields"].append({"name": "tier", "type": "string"})
        ),
        "type narrowed": _v1_with(lambda s: _field(s, "occurred_at").update(type={"type": "int"})),
        "union loses the writer's branch": _v1_with(
            lambda s: _field(s, "employees").update(type=["null", "string"])
        ),
        "required field renamed without alias": _v1_with(
            lambda s: _field(s, "event_id").update(name="id")
        ),
        "enum symbol removed without default": _v1_with(
            lambda s: _field(s, "event_type")["type"]["symbols"].remove("LeadDisqualified")
        ),
        "record renamed": _v1_with(lambda s: s.update(name="Lead")),
    }


@pytest.mark.parametrize("case", list(_breaking_cases()))
def test_breaking_changes_are_rejected_by_the_rule_and_by_fastavro(case: str) -> None:
    new = _breaking_cases()[case]
    assert can_read(new, V1), case
    assert incompatibilities("BACKWARD", new, [V1])
    # fastavro agrees that some v1 data cannot be read with the new schema.
    records = [event_to_record(created()), event_to_record(activity())]
    records[0]["event_type"] = "LeadDisqualified"
    records[0]["employees"] = 5
    with pytest.raises(Exception):  # noqa: B017  (fastavro raises several types)
        for record in records:
            _round_trip(V1, new, record)


def _compatible_cases() -> dict[str, dict[str, Any]]:
    return {
        "optional field added": _v1_with(
            lambda s: s["fields"].append(
                {"name": "tier", "type": ["null", "string"], "default": None}
            )
        ),
        "field removed": _v1_with(lambda s: s["fields"].remove(_field(s, "country"))),
        "int promoted to long": _v1_with(
            lambda s: _field(s, "employees").update(type=["null", "long"])
        ),
        "int promoted to double": _v1_with(
            lambda s: _field(s, "employees").update(type=["null", "double"])
        ),
        "string read as bytes": _v1_with(lambda s: _field(s, "event_id").update(type="bytes")),
        "renamed with alias": _v1_with(
            lambda s: _field(s, "event_id").update(name="id", aliases=["event_id"])
        ),
        "record renamed with alias": _v1_with(
            lambda s: s.update(name="Lead", aliases=["io.leadscore.events.LeadEvent"])
        ),
        "enum symbol added": _v1_with(
            lambda s: _field(s, "event_type")["type"]["symbols"].append("LeadMerged")
        ),
        "field made optional": _v1_with(
            lambda s: _field(s, "org_id").update(type=["null", "string"])
        ),
    }


@pytest.mark.parametrize("case", list(_compatible_cases()))
def test_compatible_changes_are_accepted_and_fastavro_reads_the_old_data(case: str) -> None:
    new = _compatible_cases()[case]
    assert can_read(new, V1) == []
    for record in generate_many(fastavro.parse_schema(V1), 50):
        _round_trip(V1, new, record)


def test_enum_reader_with_a_default_reads_unknown_symbols() -> None:
    # v1 reads v2's new activity kind as its default: FORWARD holds too.
    assert can_read(V1, V2) == []
    record = {**event_to_record(activity()), "company_size": 12, "campaign": "spring"}
    record.pop("employees")
    record["activity"] = {"kind": "meeting_booked", "properties": {}}
    assert _round_trip(V2, V1, record)["activity"]["kind"] == "other"
    no_default = copy.deepcopy(V1)
    del _field(no_default, "activity")["type"][1]["fields"][0]["type"]["default"]
    assert can_read(no_default, V2)


def test_levels() -> None:
    breaking_forward = _compatible_cases()["field removed"]
    assert incompatibilities("BACKWARD", breaking_forward, [V1]) == []
    assert incompatibilities("FORWARD", breaking_forward, [V1]) == []  # country has a default
    required_removed = _v1_with(lambda s: s["fields"].remove(_field(s, "org_id")))
    assert incompatibilities("BACKWARD", required_removed, [V1]) == []
    assert incompatibilities("FORWARD", required_removed, [V1])
    assert incompatibilities("FULL", required_removed, [V1])
    assert incompatibilities("NONE", _breaking_cases()["new required field"], [V1]) == []
    # Transitive levels check every earlier version, not only the latest.
    middle = _breaking_cases()["new required field"]
    back_to_v1 = copy.deepcopy(V1)
    assert incompatibilities("FORWARD", back_to_v1, [V1, middle])
    assert incompatibilities("BACKWARD", back_to_v1, [middle]) == []
    with pytest.raises(ValueError):
        incompatibilities("SIDEWAYS", V1, [V1])


def test_recursive_and_named_references() -> None:
    node = {
        "type": "record",
        "name": "Node",
        "fields": [
            {"name": "value", "type": "int"},
            {"name": "next", "type": ["null", "Node"], "default": None},
        ],
    }
    wider = copy.deepcopy(node)
    wider["fields"][0]["type"] = "long"
    assert can_read(wider, node) == []
    assert can_read(node, wider)


def test_each_problem_is_reported_at_its_own_path() -> None:
    # The checker (avro's) gathers its findings in sets; each must still land on its field.
    def break_five_ways(s: dict[str, Any]) -> None:
        s["fields"] += [{"name": "tier", "type": "string"}, {"name": "rank", "type": "int"}]
        _field(s, "occurred_at").update(type="int")
        _field(s, "event_id").update(type="int")
        _field(s, "event_type")["type"]["symbols"].remove("LeadDisqualified")

    several = _v1_with(break_five_ways)
    assert can_read(several, V1) == [
        "LeadEvent.event_id: the reader's type cannot read the writer's "
        "(reader type: int not compatible with writer type: string)",
        "LeadEvent.event_type: symbols unknown to the reader, which has no default "
        "({'LeadDisqualified'})",
        "LeadEvent.occurred_at: the reader's type cannot read the writer's "
        "(reader type: int not compatible with writer type: long)",
        "LeadEvent.tier: new field without a default",
        "LeadEvent.rank: new field without a default",
    ]
    nested = _v1_with(
        lambda s: _field(s, "activity")["type"][1]["fields"].append({"name": "w", "type": "int"})
    )
    assert can_read(nested, V1) == [
        "LeadEvent.activity: no branch of the reader's union reads the writer's type "
        "(reader union lacking writer type: RECORD)"
    ]


def test_a_problem_inside_a_union_branch_is_still_reported() -> None:
    # avro's checker restarts its locations inside a writer's union: no path, same finding.
    inner = {"type": "record", "name": "S", "fields": [{"name": "x", "type": "int"}]}
    writer = {"type": "record", "name": "R", "fields": [{"name": "a", "type": ["null", inner]}]}
    wider = copy.deepcopy(inner)
    wider["fields"].append({"name": "y", "type": "int"})
    reader = {"type": "record", "name": "R", "fields": [{"name": "a", "type": wider}]}
    assert can_read(reader, writer) == [
        "R, in a union: reader type: record not compatible with writer type: null",
        "R, in a union: y: new field without a default",
    ]


def test_a_new_map_field_with_a_default_is_backward_compatible() -> None:
    # The shape of lead-event v3's `attributes`: a map of strings, defaulting to {}.
    v3 = copy.deepcopy(V2)
    v3["fields"].append(
        {"name": "attributes", "type": {"type": "map", "values": "string"}, "default": {}}
    )
    assert incompatibilities("BACKWARD", v3, [V1, V2]) == []
    assert incompatibilities("BACKWARD_TRANSITIVE", v3, [V1, V2]) == []
    without_default = copy.deepcopy(v3)
    del without_default["fields"][-1]["default"]
    assert incompatibilities("BACKWARD", without_default, [V2]) == [
        "BACKWARD: LeadEvent.attributes: new field without a default"
    ]


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '{"type": "record", "name": "R"}',
        '"Unknown"',
        '{"type": "enum", "name": "E", "symbols": ["A", "A"]}',
        "[]",
        '{"type": "record", "name": "R", "fields": [{"name": "a", "type": []}]}',
        '{"type": "fixed", "name": "F"}',
    ],
)
def test_invalid_schemas(text: str) -> None:
    with pytest.raises(InvalidSchemaError):
        parse(text)


def test_v1_events_read_with_v2_map_to_the_same_domain_events() -> None:
    # Upstream producers still writing v1 feed the engine, which reads with v2.
    for ev in (created(), activity(), created(lead="lead-2", employees=12)):
        as_v2 = _round_trip(V1, V2, event_to_record(ev))
        assert as_v2["company_size"] == ev.profile.get("employees")
        assert as_v2["campaign"] is None
        assert record_to_event(as_v2, now=ev.occurred_at) == ev


def test_v2_fields_map_to_the_domain() -> None:
    ev = created()
    record = {**event_to_record(ev), "company_size": 800, "campaign": "spring"}
    record.pop("employees")
    assert record_to_event(_round_trip(V2, V2, record), now=ev.occurred_at) == ev
    booked = {**event_to_record(activity()), "company_size": None, "campaign": None}
    booked.pop("employees")
    booked["activity"] = {"kind": "meeting_booked", "properties": {"with": "sales"}}
    mapped = record_to_event(_round_trip(V2, V2, booked), now=ev.occurred_at)
    # The domain's activity kinds are the model's features; new kinds count as OTHER.
    assert mapped.activity_kind is ActivityKind.OTHER
    assert mapped.activity_properties == {"with": "sales"}
