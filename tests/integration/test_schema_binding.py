"""Lead-events decode only with schema ids registered under `<topic>-value` as a LeadEvent
(issue 15, item 5), on the real registry: ids of other subjects or records are dead
letters saying so, and each id costs the registry one call, not one per message."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from adapters.settings import Settings
from streams.bootstrap import Engine, bootstrap
from streams.codec import event_to_record
from streams.dlq import Reason
from streams.wire import (
    LEAD_EVENT_RECORD,
    LEAD_EVENT_SCHEMA_NEWEST,
    AvroTopic,
    ForeignSchemaError,
    RegistryUnavailableError,
    SchemaCatalog,
    SubjectBoundDecoder,
    UnknownSchemaError,
    encode,
)
from tests.support.factories import FixedScorer, created
from tests.support.net import free_port
from tests.support.registry import registry_conf

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    e = bootstrap(settings, scorer=FixedScorer())
    yield e
    e.close()


def lead_event_schema(doc: str, name: str | None = None) -> str:
    schema = json.loads(LEAD_EVENT_SCHEMA_NEWEST.read_text())
    schema["doc"] = doc  # another text, so another id than the engine's own
    if name is not None:
        schema["name"], schema["namespace"] = name, "io.elsewhere"
    return json.dumps(schema)


def encoded(catalog: SchemaCatalog, schema_id: int, lead: str) -> bytes:
    record = event_to_record(created(lead=lead))
    record = {**record, "company_size": record.pop("employees"), "attributes": {}}
    return encode(schema_id, catalog.parsed(schema_id), record)


class CountingCatalog(SchemaCatalog):
    """The real catalog, counting how often it asks the registry about an id's subjects."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.schema_registry_url, user_info=settings.schema_registry_user_info)
        self.asked: list[int] = []

    def subjects_of(self, schema_id: int) -> set[str]:
        self.asked.append(schema_id)
        return super().subjects_of(schema_id)


def test_ids_of_another_subject_or_record_are_dead_letters(
    settings: Settings, engine: Engine
) -> None:
    catalog, subject = engine.catalog, f"{settings.topic_lead_events}-value"
    ours = AvroTopic(catalog, settings.topic_lead_events, LEAD_EVENT_SCHEMA_NEWEST).schema_id
    # The same record, registered only under another topic's subject.
    other = catalog.register(f"billing-{secrets.token_hex(3)}-value", lead_event_schema("b"))
    # Another record under our own subject: the registry takes it once a producer with
    # credentials turns compatibility off for the subject.
    with SchemaRegistryClient(registry_conf(settings)) as client:
        client.set_compatibility(subject, "NONE")
        thing = client.register_schema(subject, Schema(lead_event_schema("t", "Thing"), "AVRO"))
    # The engine's own text registered under a second subject too: still ours.
    shared = catalog.register(f"mirror-{secrets.token_hex(3)}-value", lead_event_schema("s"))
    shared_too = catalog.register(subject, lead_event_schema("s"))
    assert shared == shared_too

    values = [
        encoded(catalog, ours, "lead-ours"),
        encoded(catalog, other, "lead-other-subject"),
        encoded(catalog, thing, "lead-other-record"),
        encoded(catalog, shared, "lead-shared"),
    ]
    stats = engine.processor.process(values)
    assert (stats.received, stats.applied, stats.invalid) == (4, 2, 2)
    letters = {letter.message.value: letter for letter in stats.dead_letters}
    assert {x.reason for x in letters.values()} == {Reason.UNKNOWN_SCHEMA}
    by_subject, by_record = letters[values[1]], letters[values[2]]
    assert by_subject.error_class == by_record.error_class == "ForeignSchemaError"
    assert f"schema id {other} is registered under billing-" in by_subject.detail
    assert by_subject.detail.endswith(f"not {subject}")
    assert by_record.detail == (
        f"schema id {thing} is the record io.elsewhere.Thing, not {LEAD_EVENT_RECORD}"
    )


def test_each_id_is_asked_about_once_and_refusals_expire(settings: Settings) -> None:
    subject = f"bound-{secrets.token_hex(4)}-value"
    catalog = CountingCatalog(settings)
    ours = catalog.register(subject, lead_event_schema("ours"))
    foreign = catalog.register(f"elsewhere-{secrets.token_hex(3)}-value", lead_event_schema("f"))
    now = [0.0]
    decoder = SubjectBoundDecoder(
        catalog, subject, LEAD_EVENT_RECORD, refusal_ttl_s=60, clock=lambda: now[0]
    )
    good, bad = encoded(catalog, ours, "lead-1"), encoded(catalog, foreign, "lead-2")
    unknown = b"\x00" + (2**31 - 9).to_bytes(4, "big") + good[5:]

    for _ in range(500):
        assert decoder.decode(good)["lead_id"] == "lead-1"
    for _ in range(50):
        with pytest.raises(ForeignSchemaError):
            decoder.decode(bad)
        with pytest.raises(UnknownSchemaError, match="unknown schema id"):
            decoder.decode(unknown)
    assert sorted(catalog.asked) == sorted([ours, foreign, 2**31 - 9])

    # Registered under our subject later: accepted once the refusal has expired.
    assert catalog.register(subject, lead_event_schema("f")) == foreign
    with pytest.raises(ForeignSchemaError):
        decoder.decode(bad)  # still remembered
    now[0] = 61.0
    assert decoder.decode(bad)["lead_id"] == "lead-2"
    assert catalog.asked.count(foreign) == 2
    assert decoder.decode(good)["lead_id"] == "lead-1"
    assert catalog.asked.count(ours) == 1


def test_a_registry_that_does_not_answer_is_not_a_refusal(settings: Settings) -> None:
    catalog = SchemaCatalog.from_settings(settings)
    subject = f"bound-{secrets.token_hex(4)}-value"
    value = encoded(catalog, catalog.register(subject, lead_event_schema("x")), "lead-x")
    away = SchemaCatalog(f"http://127.0.0.1:{free_port()}")
    decoder = SubjectBoundDecoder(away, subject, LEAD_EVENT_RECORD)
    with pytest.raises(RegistryUnavailableError):
        decoder.decode(value)
    # Nothing remembered: the same id is asked about again when the registry answers.
    decoder.catalog = SchemaCatalog.from_settings(settings)
    assert decoder.decode(value)["lead_id"] == "lead-x"


def test_ids_under_a_tenants_org_topic_subject_are_lead_events(
    settings: Settings, engine: Engine
) -> None:
    # A tenant's producer writes <lead-events>.org.<org> with the serializer's default
    # subject; the gate forwards its bytes to lead-events unchanged.
    catalog, topic = engine.catalog, settings.topic_lead_events
    tenant = catalog.register(f"{topic}.org.acme-value", lead_event_schema("tenant"))
    near_misses = [
        catalog.register(f"{topic}.org.acme-key", lead_event_schema("key")),
        catalog.register(f"{topic}.orgs.acme-value", lead_event_schema("orgs")),
        catalog.register(f"x{topic}.org.acme-value", lead_event_schema("x")),
    ]
    values = [encoded(catalog, tenant, "lead-tenant")] + [
        encoded(catalog, schema_id, f"lead-miss-{i}") for i, schema_id in enumerate(near_misses)
    ]
    stats = engine.processor.process(values)
    assert (stats.applied, stats.invalid) == (1, 3)
    assert {x.error_class for x in stats.dead_letters} == {"ForeignSchemaError"}
