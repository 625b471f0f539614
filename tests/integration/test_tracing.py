"""Traces on the real broker and database: a lead-event's ``traceparent`` reaches the
score-event it causes, through the worker's batch, the side table and the relay.

The worker's part and the relay's part each record spans with an InMemorySpanExporter
of its own provider (as two processes would); what crosses between them is only what
crosses in production: the ``trace_contexts`` row and Kafka headers."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from adapters.settings import Settings
from streams.bootstrap import Engine, bootstrap
from streams.codec import event_to_record
from streams.dlq import RawMessage, normalize_headers
from streams.relay import kafka_producer
from streams.tracing import TRACEPARENT, TraceContexts, Tracing
from streams.wire import LEAD_EVENT_SCHEMA, AvroTopic
from tests.support.factories import FixedScorer, created

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
INCOMING = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    e = bootstrap(dataclasses.replace(settings, otel_exporter="none"), scorer=FixedScorer())
    yield e
    e.close()


def produce(settings: Settings, engine: Engine, events: list, headers: list) -> None:  # type: ignore[type-arg]
    enc = AvroTopic(engine.catalog, settings.topic_lead_events, LEAD_EVENT_SCHEMA)
    producer = kafka_producer(settings.kafka)
    for ev, head in zip(events, headers, strict=True):
        producer.produce(
            settings.topic_lead_events,
            key=ev.lead_id.encode(),
            value=enc.encode(event_to_record(ev)),
            headers=head,
        )
    assert producer.flush(30) == 0


def consume(settings: Settings, topic: str, expected: int, group: str) -> list[RawMessage]:
    """Messages as the worker sees them: value, key, headers, partition, offset."""
    consumer = Consumer(
        {
            **settings.kafka,
            "group.id": f"{settings.consumer_group}-{group}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    out: list[RawMessage] = []
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline and len(out) < expected:
            for msg in consumer.consume(100, timeout=0.5):
                if msg.error():
                    continue
                ts = msg.timestamp()[1]
                out.append(
                    RawMessage(
                        value=msg.value(),
                        key=msg.key(),
                        headers=normalize_headers(msg.headers()),
                        topic=msg.topic(),
                        partition=msg.partition(),
                        offset=msg.offset(),
                        timestamp_ms=ts if ts > 0 else None,
                    )
                )
    finally:
        consumer.close()
    assert len(out) == expected
    return out


def header(message: RawMessage, name: str) -> str | None:
    values = [v.decode() for k, v in message.headers if k == name]
    return values[0] if values else None


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def test_a_lead_events_trace_reaches_its_score_event(engine: Engine, settings: Settings) -> None:
    traced, untraced = created(lead="traced"), created(lead="untraced")
    produce(settings, engine, [traced, untraced], [[(TRACEPARENT, INCOMING.encode())], None])
    messages = consume(settings, settings.topic_lead_events, 2, "worker")

    # The worker's process: its batch with the two lead-events.
    worker_spans = InMemorySpanExporter()
    worker_tracing = Tracing.from_settings(settings, exporter=worker_spans)
    engine.processor.tracing = worker_tracing
    engine.processor.contexts = TraceContexts(settings.pg_dsn)
    stats = engine.processor.process(messages)
    assert (stats.applied, stats.scored) == (2, 2)
    spans = worker_spans.get_finished_spans()

    [batch] = by_name(spans, "leadscore.batch")
    for name in ("decode", "apply", "score", "store"):
        found = by_name(spans, name)
        assert found, f"no {name} span"
        assert all(s.parent is not None for s in found)
        assert all(s.context.trace_id == batch.context.trace_id for s in found)
    events = {s.attributes["leadscore.event_id"]: s for s in by_name(spans, "leadscore.lead_event")}
    assert set(events) == {traced.event_id, untraced.event_id}
    mine = events[traced.event_id]
    # Its parent is the producer's span, in the producer's trace, and it links the batch.
    assert f"{mine.context.trace_id:032x}" == TRACE_ID
    assert mine.parent is not None and f"{mine.parent.span_id:016x}" == PARENT_ID
    assert [link.context.span_id for link in mine.links] == [batch.context.span_id]
    # Without a traceparent the lead-event starts a trace of its own.
    root = events[untraced.event_id]
    assert root.parent is None and root.context.trace_id != mine.context.trace_id

    # The relay's process: only the database and Kafka are shared with the worker.
    relay_spans = InMemorySpanExporter()
    with engine.relay() as relay:
        relay.use_tracing(Tracing.from_settings(settings, exporter=relay_spans), settings.pg_dsn)
        assert relay.publish_once() == 2
    publishes = by_name(relay_spans.get_finished_spans(), "publish")
    assert len(publishes) == 2

    scores = consume(settings, settings.topic_score_events, 2, "reader")
    carried = {}
    for message in scores:
        record = engine.catalog.decode(message.value)
        traceparent = header(message, TRACEPARENT)
        assert traceparent is not None, "a score-event without traceparent"
        carried[record["caused_by_event_id"]] = traceparent
    version, trace_id, span_id, flags = carried[traced.event_id].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    # The score-event's span is the relay's publish, a child of the lead-event's span.
    [publish] = [p for p in publishes if f"{p.context.span_id:016x}" == span_id]
    assert publish.parent is not None and publish.parent.span_id == mine.context.span_id
    assert carried[untraced.event_id].split("-")[1] == f"{root.context.trace_id:032x}"


def test_tracing_off_records_nothing_and_adds_no_header(engine: Engine, settings: Settings) -> None:
    produce(settings, engine, [created(lead="plain")], [[(TRACEPARENT, INCOMING.encode())]])
    messages = consume(settings, settings.topic_lead_events, 1, "worker")
    assert not engine.processor.tracing.enabled
    assert engine.processor.process(messages).applied == 1
    with engine.relay() as relay:
        assert relay.publish_once() == 1
    [score] = consume(settings, settings.topic_score_events, 1, "reader")
    assert header(score, TRACEPARENT) is None
    with pytest.raises(ValueError, match="LEADSCORE_OTEL_EXPORTER"):
        Tracing.from_settings(dataclasses.replace(settings, otel_exporter="jaeger"))
