"""The named table of hostile lead-events and messages, and the engine's answer to each.

Each case builds the Kafka messages it sends from a ``Kit`` (the registry, the encoder of
``lead-events-value``, the clock). ``answer`` is what the engine must do with the last
message: ``stored``, ``duplicate``, a dead-letter reason (streams/dlq.py ``Reason``), or
``broker`` (Kafka itself refuses it; the engine never sees it). ``before`` messages set the
scene and must be stored. ``pending`` names work that is not built: the case's answer is
the one the issue asks for, and the suite marks it as an expected failure until it is.
The README's "Bad input and tenants" table is this table.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient

from streams.codec import (
    EARLIEST,
    MAX_CLOCK_SKEW,
    MAX_EMPLOYEES,
    MAX_ID_LENGTH,
    MAX_PROPERTIES,
    MAX_STRING_LENGTH,
)
from streams.wire import LEAD_EVENT_SCHEMA_NEWEST, AvroTopic, SchemaCatalog, encode

ORG = "acme"  # registered by the suite
OTHER_ORG = "globex"  # registered too
UNREGISTERED_ORG = "initech"
# The dev broker's limit on one record batch (tests/e2e/test_dead_letter_size.py).
BROKER_LIMIT = 1_048_576
STORED, DUPLICATE, BROKER = "stored", "duplicate", "broker"


@dataclass
class Kit:
    catalog: SchemaCatalog
    encoder: AvroTopic  # lead-events-value, the newest lead_event schema
    now: datetime
    serial: int = 0
    registry: dict[str, str] = field(default_factory=dict)  # SchemaRegistryClient config

    def next(self, what: str) -> str:
        self.serial += 1
        return f"bad-{self.serial:03d}-{what}"

    def record(self, lead: str, **fields: Any) -> dict[str, Any]:
        """A valid LeadCreated for ``ORG``, with ``fields`` replacing its own."""
        record: dict[str, Any] = {
            "event_id": self.next("evt"),
            "event_type": "LeadCreated",
            "org_id": ORG,
            "lead_id": lead,
            "occurred_at": self.now - timedelta(minutes=5),
            "email": "pat@example.io",
            "first_name": "Pat",
            "last_name": "Lee",
            "company": "Example",
            "title": "VP of Engineering",
            "industry": "software",
            "company_size": 800,
            "country": "GB",
            "source": "referral",
            "campaign": None,
            "activity": None,
            "reason": None,
            "attributes": {},
        }
        record.update(fields)
        return record

    def value(self, lead: str, **fields: Any) -> bytes:
        return self.encoder.encode(self.record(lead, **fields))

    def other_schema(
        self,
        subject: str,
        changes: dict[str, Any],
        name: str | None = None,
        *,
        compatibility: str | None = None,
    ) -> RegisteredSchema:
        """The newest lead_event schema, optionally renamed (``name``, in another
        namespace) and with field types changed, registered under ``subject`` (after
        setting its ``compatibility``): what a careless or hostile producer holding the
        registry's credentials could register."""
        if compatibility is not None:
            with SchemaRegistryClient(self.registry) as client:
                client.set_compatibility(subject, compatibility)
        schema = json.loads(LEAD_EVENT_SCHEMA_NEWEST.read_text())
        if name is not None:
            schema["name"], schema["namespace"] = name, "io.elsewhere"
        schema["doc"] = f"not the engine's: {subject}"
        for f in schema["fields"]:
            if f["name"] in changes:
                f["type"] = changes[f["name"]]
        text = json.dumps(schema, sort_keys=True, separators=(",", ":"))
        return RegisteredSchema(self.catalog, subject, text)


class RegisteredSchema:
    """An encoder for a schema text registered under any subject."""

    def __init__(self, catalog: SchemaCatalog, subject: str, text: str) -> None:
        self.subject = subject
        self.schema_id = catalog.register(subject, text)
        self.parsed = catalog.parsed(self.schema_id)

    def encode(self, record: dict[str, Any]) -> bytes:
        return encode(self.schema_id, self.parsed, record)


Build = Callable[[Kit], list[bytes | None]]


@dataclass(frozen=True)
class Case:
    name: str
    what: str
    answer: str
    build: Build  # the messages: all but the last set the scene (and must be stored)
    pending: str | None = None
    check: Callable[[dict[str, Any]], None] | None = field(default=None, compare=False)


def _field(name: str, bad: str) -> Build:
    return lambda k: [k.value(k.next(name), **{name: bad})]


def _nul_case(name: str) -> Case:
    return Case(f"nul_in_{name}", f"NUL in `{name}`", "invalid", _field(name, "A\x00B"))


def _activity(k: Kit, properties: dict[str, str]) -> bytes:
    return k.value(
        k.next("act"),
        event_type="ActivityRecorded",
        activity={"kind": "page_view", "properties": properties},
    )


def _utf8_broken(k: Kit) -> list[bytes | None]:
    value = k.value(k.next("utf8"), title="TITLEMARK")
    assert value.count(b"TITLEMARK") == 1
    return [value.replace(b"TITLEMARK", b"TITLE\xff\xfeRK")]


def _wrong_magic(k: Kit) -> list[bytes | None]:
    return [b"\x01" + k.value(k.next("magic"))[1:]]


def _unknown_schema(k: Kit) -> list[bytes | None]:
    return [b"\x00" + (2**31 - 7).to_bytes(4, "big") + k.value(k.next("schema"))[5:]]


def _truncated(k: Kit) -> list[bytes | None]:
    return [k.value(k.next("cut"))[:20]]


def _other_subject(k: Kit) -> list[bytes | None]:
    # Same record, same fields: only the subject it was registered under differs.
    topic = k.other_schema("billing-events-value", {})
    return [topic.encode(k.record(k.next("subject")))]


def _other_name_long(k: Kit) -> list[bytes | None]:
    topic = k.other_schema("thing-value", {"company_size": ["null", "long"]}, name="Thing")
    return [topic.encode(k.record(k.next("long"), company_size=MAX_EMPLOYEES + 1))]


def _other_name_wrong_type(k: Kit) -> list[bytes | None]:
    topic = k.other_schema("thing2-value", {"title": ["null", "long"]}, name="Thing2")
    return [topic.encode(k.record(k.next("type"), title=42))]


def _our_subject_long_size(k: Kit) -> list[bytes | None]:
    # BACKWARD lets int widen to long, so the registry takes it under our own subject.
    topic = k.other_schema(k.encoder.subject, {"company_size": ["null", "long"]})
    return [topic.encode(k.record(k.next("long"), company_size=MAX_EMPLOYEES + 1))]


def _our_subject_other_record(k: Kit) -> list[bytes | None]:
    # Every field a valid LeadCreated's: only the record's name is not ours.
    topic = k.other_schema(k.encoder.subject, {}, name="Thing3", compatibility="NONE")
    return [topic.encode(k.record(k.next("record")))]


def _replay(k: Kit) -> list[bytes | None]:
    first = k.record("replayed-1", title="First body")
    second = dict(first, title="Second body", company="Someone else")
    return [k.encoder.encode(first), k.encoder.encode(second)]


def _check_replay(seen: dict[str, Any]) -> None:
    assert seen["leads"][(ORG, "replayed-1")]["title"] == "First body"


def _other_orgs_lead(k: Kit) -> list[bytes | None]:
    return [
        k.value("shared-lead-7", title="Acme's own"),
        k.value("shared-lead-7", org_id=OTHER_ORG, title="Globex's claim"),
    ]


def _check_other_orgs_lead(seen: dict[str, Any]) -> None:
    # The payload's org decides whose lead it is: globex got a lead of its own with that
    # id; acme's lead is untouched.
    assert seen["leads"][(ORG, "shared-lead-7")]["title"] == "Acme's own"
    assert seen["leads"][(OTHER_ORG, "shared-lead-7")]["title"] == "Globex's claim"


def _lead_id_case(name: str, lead: str) -> Case:
    def check(seen: dict[str, Any]) -> None:
        assert (ORG, lead) in seen["leads"]
        assert (ORG, lead) in seen["scores"]

    return Case(
        f"lead_id_{name}", f"lead id `{lead!r}`", STORED, lambda k: [k.value(lead)], check=check
    )


def _huge(k: Kit, size: int) -> list[bytes | None]:
    record = k.record(k.next("huge"), title="")
    base = len(k.encoder.encode(record))
    # A string's length prefix grows from 1 to 3 bytes past 8,191 characters.
    record["title"] = "x" * (size - base - 2)
    value = k.encoder.encode(record)
    assert len(value) == size
    return [value]


def _at(moment: Callable[[Kit], datetime], answer: str, name: str, what: str) -> Case:
    return Case(name, what, answer, lambda k: [k.value(k.next(name), occurred_at=moment(k))])


CASES: list[Case] = [
    *(
        _nul_case(f)
        for f in (
            "email",
            "first_name",
            "last_name",
            "company",
            "title",
            "industry",
            "country",
            "source",
            "campaign",
        )
    ),  # fmt: skip
    Case(
        "nul_in_reason",
        "NUL in a LeadDisqualified `reason`",
        "invalid",
        lambda k: [k.value(k.next("why"), event_type="LeadDisqualified", reason="spam\x00")],
    ),
    Case(
        "nul_in_activity_property_value",
        "NUL in an activity property's value",
        "invalid",
        lambda k: [_activity(k, {"url": "/pricing\x00"})],
    ),
    Case(
        "nul_in_activity_property_name",
        "NUL in an activity property's name",
        "invalid",
        lambda k: [_activity(k, {"u\x00rl": "/pricing"})],
    ),
    Case(
        "nul_in_attribute_value",
        "NUL in an attribute's value",
        "invalid",
        lambda k: [k.value(k.next("attr"), attributes={"plan": "pro\x00"})],
    ),
    Case(
        "nul_in_attribute_name",
        "NUL in an attribute's name",
        "invalid",
        lambda k: [k.value(k.next("attrn"), attributes={"pl\x00an": "pro"})],
    ),
    Case("nul_in_lead_id", "NUL in `lead_id`", "invalid", lambda k: [k.value("lead\x00x")]),
    Case(
        "nul_in_event_id",
        "NUL in `event_id`",
        "invalid",
        lambda k: [k.value(k.next("eid"), event_id="evt\x00x")],
    ),
    Case("escape_in_title", "ANSI escape in `title`", "invalid", _field("title", "\x1b[31mCEO")),
    Case("newline_in_company", "newline in `company`", "invalid", _field("company", "Ex\nample")),
    Case("c1_control_in_last_name", "C1 control (U+0085)", "invalid", _field("last_name", "L\x85")),
    Case(
        "tab_and_unicode_in_title",
        "tab, accents, CJK and a zero-width non-joiner in `title`",
        STORED,
        _field("title", "Directrice\tgénérale 総務 \u200c"),
    ),
    Case("invalid_utf8", "invalid UTF-8 inside a string", "undecodable", _utf8_broken),
    Case(
        "title_at_limit",
        f"`title` of {MAX_STRING_LENGTH} characters",
        STORED,
        _field("title", "t" * MAX_STRING_LENGTH),
    ),  # fmt: skip
    Case(
        "title_over_limit",
        f"`title` of {MAX_STRING_LENGTH + 1} characters",
        "invalid",
        _field("title", "t" * (MAX_STRING_LENGTH + 1)),
    ),  # fmt: skip
    Case(
        "properties_at_limit",
        f"{MAX_PROPERTIES} activity properties",
        STORED,
        lambda k: [_activity(k, {f"p{i}": "v" for i in range(MAX_PROPERTIES)})],
    ),
    Case(
        "properties_over_limit",
        f"{MAX_PROPERTIES + 1} activity properties",
        "invalid",
        lambda k: [_activity(k, {f"p{i}": "v" for i in range(MAX_PROPERTIES + 1)})],
    ),
    Case(
        "attributes_at_limit",
        f"{MAX_PROPERTIES} attributes",
        STORED,
        lambda k: [
            k.value(k.next("attrs"), attributes={f"a{i}": "v" for i in range(MAX_PROPERTIES)})
        ],
    ),
    Case(
        "attributes_over_limit",
        f"{MAX_PROPERTIES + 1} attributes",
        "invalid",
        lambda k: [
            k.value(k.next("attrs"), attributes={f"a{i}": "v" for i in range(MAX_PROPERTIES + 1)})
        ],
    ),
    Case(
        "lead_id_at_limit",
        f"`lead_id` of {MAX_ID_LENGTH} characters",
        STORED,
        lambda k: [k.value("L" * MAX_ID_LENGTH)],
    ),  # fmt: skip
    Case(
        "lead_id_over_limit",
        f"`lead_id` of {MAX_ID_LENGTH + 1} characters",
        "invalid",
        lambda k: [k.value("L" * (MAX_ID_LENGTH + 1))],
    ),  # fmt: skip
    Case("wrong_magic_byte", "magic byte 1", "undecodable", _wrong_magic),
    Case("unknown_schema_id", "a schema id nobody registered", "unknown_schema", _unknown_schema),
    Case("truncated_body", "an Avro body cut short", "undecodable", _truncated),
    Case("empty_value", "a tombstone (no value)", "undecodable", lambda k: [None]),
    Case(
        "other_subject_same_record",
        "a LeadEvent schema registered under another subject",
        "unknown_schema",
        _other_subject,
    ),
    Case(
        "other_record_name_int64_size",
        "a record named Thing (under `thing-value`) whose `company_size` is a long > int32",
        "unknown_schema",
        _other_name_long,
    ),
    Case(
        "other_record_name_wrong_type",
        "a record named Thing2 (under `thing2-value`) whose `title` is a long",
        "unknown_schema",
        _other_name_wrong_type,
    ),
    # Before the next case: BACKWARD compares with the subject's latest, which is then Thing3.
    Case(
        "our_subject_int64_size",
        "a LeadEvent whose `company_size` is a long > int32, registered under lead-events-value",
        "undecodable",
        _our_subject_long_size,
    ),
    Case(
        "our_subject_other_record",
        "a valid event written as a record named Thing3, registered under lead-events-value "
        "(compatibility NONE)",
        "unknown_schema",
        _our_subject_other_record,
    ),
    Case("negative_company_size", "`company_size` -5", "invalid", _field("company_size", -5)),  # type: ignore[arg-type]
    Case(
        "activity_without_activity",
        "an ActivityRecorded with no activity",
        "invalid",
        lambda k: [k.value(k.next("noact"), event_type="ActivityRecorded")],
    ),
    _at(lambda k: EARLIEST, STORED, "occurred_at_earliest", "`occurred_at` 2000-01-01T00:00Z"),
    _at(
        lambda k: EARLIEST - timedelta(milliseconds=1),
        "invalid",
        "occurred_at_before_earliest",
        "`occurred_at` 1 ms before 2000",
    ),  # fmt: skip
    _at(
        lambda k: datetime.now(UTC) + MAX_CLOCK_SKEW - timedelta(minutes=1),
        STORED,
        "occurred_at_near_latest",
        "`occurred_at` now + 1 day - 1 min",
    ),  # fmt: skip
    _at(
        lambda k: datetime.now(UTC) + MAX_CLOCK_SKEW + timedelta(minutes=1),
        "invalid",
        "occurred_at_after_latest",
        "`occurred_at` now + 1 day + 1 min",
    ),  # fmt: skip
    _lead_id_case("slash", "a/b/c"),
    _lead_id_case("dotdot", ".."),
    _lead_id_case("percent", "%2e%2e%2Fadmin"),
    _lead_id_case("colon", "acme:lead:1"),
    _lead_id_case("unicode", "lëad-名前-🚀"),
    Case(
        "bad_org_id",
        "`org_id` with a `/`",
        "invalid",
        lambda k: [k.value(k.next("org"), org_id="acme/../globex")],
    ),
    Case(
        "replayed_event_id_other_body",
        "an event_id sent again with a different body",
        DUPLICATE,
        _replay,
        check=_check_replay,
    ),
    Case(
        "unregistered_org",
        "a lead-event for an org nobody registered",
        "unknown_org",
        lambda k: [k.value(k.next("org"), org_id=UNREGISTERED_ORG)],
    ),
    Case(
        "another_orgs_lead_id",
        "a lead-event naming another org's lead id",
        STORED,
        _other_orgs_lead,
        check=_check_other_orgs_lead,
    ),
    Case(
        "over_broker_limit",
        f"a value of {BROKER_LIMIT + 1:,} bytes",
        BROKER,
        lambda k: _huge(k, BROKER_LIMIT + 1),
    ),
    # Last: before issue 15 item 3 its dead letter stopped the worker.
    Case(
        "just_under_broker_limit",
        "a LeadCreated of 1,000,273 bytes (a long title)",
        "invalid",
        lambda k: _huge(k, 1_000_273),
    ),
]
