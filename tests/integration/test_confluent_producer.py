"""An upstream producer written with confluent-kafka alone feeds the engine.

The producer side uses only confluent-kafka (``Producer``, ``SchemaRegistryClient``,
``AvroSerializer``), the registry URL and the schema files: no project code. Two
producers write v1 and v2 lead-events to one topic; the engine applies both. A v3 producer
and the engine's own carry attributes to the Lead.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext, StringSerializer

from adapters.settings import Settings
from domain.lead import lead_aggregate_id
from streams.bootstrap import Engine, bootstrap
from tests.support.factories import FixedScorer
from tests.support.pipeline import lead_event_values
from tests.support.registry import registry_conf

pytestmark = pytest.mark.integration

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas" / "avro"


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    e = bootstrap(settings, scorer=FixedScorer())
    yield e
    e.close()


def produce(settings: Settings, schema_file: str, records: list[dict[str, Any]]) -> None:
    """What an upstream team writes: Confluent's serializer, registry and producer."""
    with SchemaRegistryClient(registry_conf(settings)) as registry:
        serialize = AvroSerializer(registry, (SCHEMAS / schema_file).read_text())
        key = StringSerializer("utf_8")
        producer = Producer({**settings.kafka, "acks": "all"})
        topic = settings.topic_lead_events
        for record in records:
            producer.produce(
                topic,
                key=key(record["lead_id"]),
                value=serialize(record, SerializationContext(topic, MessageField.VALUE)),
            )
        assert producer.flush(30) == 0


def _base(lead: str, event_type: str, at: datetime) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "org_id": "org-confluent",
        "lead_id": lead,
        "occurred_at": at,
    }


def test_confluent_avro_producers_of_v1_and_v2_feed_the_engine(
    engine: Engine, settings: Settings
) -> None:
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    v1 = [
        {**_base("lead-a", "LeadCreated", now), "email": "a@acme.io", "employees": 250,
         "title": "CTO"},
        {**_base("lead-a", "ActivityRecorded", now + timedelta(minutes=1)),
         "activity": {"kind": "demo_request", "properties": {"page": "/demo"}}},
    ]  # fmt: skip
    v2 = [
        {**_base("lead-b", "LeadCreated", now), "email": "b@initech.io", "company_size": 40,
         "campaign": "spring-launch"},
        {**_base("lead-b", "ActivityRecorded", now + timedelta(minutes=2)),
         "activity": {"kind": "meeting_booked", "properties": {}}},
        {**_base("lead-a", "LeadUpdated", now + timedelta(minutes=3)), "company_size": 300},
    ]  # fmt: skip
    produce(settings, "lead_event.v1.avsc", v1)
    produce(settings, "lead_event.v2.avsc", v2)

    with SchemaRegistryClient(registry_conf(settings)) as registry:
        assert registry.get_versions(f"{settings.topic_lead_events}-value") == [1, 2]

    values = lead_event_values(settings, expected=5)
    assert len(values) == 5
    stats = engine.processor.process(values)
    assert (stats.received, stats.applied, stats.invalid, stats.failed) == (5, 5, 0, 0)

    leads = engine.store.load(
        [lead_aggregate_id("org-confluent", "lead-a"), lead_aggregate_id("org-confluent", "lead-b")]
    )
    a = leads[lead_aggregate_id("org-confluent", "lead-a")]
    b = leads[lead_aggregate_id("org-confluent", "lead-b")]
    assert a is not None and b is not None
    # v1's employees and v2's company_size are the same profile field in the domain.
    assert a.profile["employees"] == 300 and a.profile["title"] == "CTO"
    assert b.profile["employees"] == 40 and b.profile["email"] == "b@initech.io"
    assert {e["event_id"] for e in v1 + v2} == a.recent_event_ids.keys() | b.recent_event_ids.keys()


def test_the_registry_refuses_a_producer_with_a_breaking_schema(settings: Settings) -> None:
    schema = json.loads((SCHEMAS / "lead_event.v2.avsc").read_text())
    schema["fields"].append({"name": "budget", "type": "long"})  # required: breaks BACKWARD
    with SchemaRegistryClient(registry_conf(settings)) as registry:
        AvroSerializer(registry, (SCHEMAS / "lead_event.v1.avsc").read_text())(
            {**_base("lead-c", "LeadCreated", datetime.now(UTC))},
            SerializationContext(settings.topic_lead_events, MessageField.VALUE),
        )
        breaking = AvroSerializer(registry, json.dumps(schema))
        with pytest.raises(Exception, match="incompatible"):
            breaking(
                {**_base("lead-c", "LeadCreated", datetime.now(UTC)), "budget": 1},
                SerializationContext(settings.topic_lead_events, MessageField.VALUE),
            )


def test_v3_attributes_reach_the_lead_from_confluent_and_our_own_producer(
    engine: Engine, settings: Settings
) -> None:
    from domain.events import EventType, LeadEvent
    from streams.producer import lead_event_encoder, produce_events

    now = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    upstream = [
        {**_base("lead-u", "LeadCreated", now), "email": "u@school.example",
         "attributes": {"occupation": "working professional", "lead_origin": "api"}},
        {**_base("lead-u", "LeadUpdated", now + timedelta(minutes=5)),
         "attributes": {"specialization": "finance management", "lead_origin": "lead add form"}},
    ]  # fmt: skip
    produce(settings, "lead_event.v3.avsc", upstream)
    ours = [
        LeadEvent(
            event_id=str(uuid.uuid4()),
            event_type=EventType.LEAD_CREATED,
            org_id="org-confluent",
            lead_id="lead-o",
            occurred_at=now,
            profile={"employees": 12},
            attributes={"occupation": "student"},
        )
    ]
    encoder = lead_event_encoder(engine.catalog, settings.topic_lead_events)
    producer = Producer({**settings.kafka, "acks": "all"})
    report = produce_events(producer, settings.topic_lead_events, encoder, ours)
    assert (report.sent, report.failed) == (1, 0)
    with SchemaRegistryClient(registry_conf(settings)) as registry:
        latest = registry.get_latest_version(f"{settings.topic_lead_events}-value")
        assert json.loads(latest.schema.schema_str)["fields"][-1]["name"] == "attributes"

    values = lead_event_values(settings, expected=3)
    assert len(values) == 3
    stats = engine.processor.process(values)
    assert (stats.received, stats.applied, stats.invalid, stats.failed) == (3, 3, 0, 0)
    leads = engine.store.load(
        [lead_aggregate_id("org-confluent", "lead-u"), lead_aggregate_id("org-confluent", "lead-o")]
    )
    u = leads[lead_aggregate_id("org-confluent", "lead-u")]
    o = leads[lead_aggregate_id("org-confluent", "lead-o")]
    assert u is not None and o is not None
    # A later value replaces the earlier one; fields not set again are kept.
    assert u.attributes == {
        "occupation": "working professional",
        "lead_origin": "lead add form",
        "specialization": "finance management",
    }
    assert o.attributes == {"occupation": "student"} and o.profile["employees"] == 12
