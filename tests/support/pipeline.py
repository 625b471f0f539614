"""Lead-events through a real engine, and the score-events it publishes read back."""

from __future__ import annotations

import time

from confluent_kafka import Consumer

from adapters.settings import Settings
from domain.scoring import Scorer
from streams.bootstrap import Engine, bootstrap
from streams.codec import event_to_record
from streams.wire import LEAD_EVENT_SCHEMA, AvroTopic


def encoded(engine: Engine, events: list) -> list[bytes]:  # type: ignore[type-arg]
    enc = AvroTopic(engine.catalog, engine.settings.topic_lead_events, LEAD_EVENT_SCHEMA)
    return [enc.encode(event_to_record(ev)) for ev in events]


def process_all(engine: Engine, events: list, batch: int = 500) -> None:  # type: ignore[type-arg]
    """Feed lead-events through the engine's real processor, in batches, as a worker would."""
    values = encoded(engine, events)
    for i in range(0, len(values), batch):
        engine.processor.process(values[i : i + batch])


def store_history(
    settings: Settings,
    events: list,  # type: ignore[type-arg]
    scorer: Scorer | None = None,
    batch: int = 500,
) -> None:
    """Store ``events`` with a short-lived engine (the committed model unless ``scorer``)."""
    e = bootstrap(settings, scorer=scorer)
    try:
        process_all(e, events, batch)
    finally:
        e.close()


def consume_all(
    settings: Settings, expected: int, timeout: float = 30
) -> list[tuple[bytes, bytes]]:
    consumer = Consumer(
        {
            **settings.kafka,
            "group.id": f"{settings.consumer_group}-reader",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([settings.topic_score_events])
    out: list[tuple[bytes, bytes]] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(out) < expected:
            for msg in consumer.consume(500, timeout=0.5):
                if not msg.error():
                    out.append((msg.key(), msg.value()))
        # A little longer: anything beyond the expected count is a defect too.
        for msg in consumer.consume(500, timeout=1.0):
            if not msg.error():
                out.append((msg.key(), msg.value()))
    finally:
        consumer.close()
    return out


def lead_event_values(settings: Settings, expected: int, timeout: float = 60) -> list[bytes]:
    """The values on the lead-events topic from the start, until ``expected`` are read."""
    consumer = Consumer(
        {
            **settings.kafka,
            "group.id": settings.consumer_group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([settings.topic_lead_events])
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while len(values) < expected and time.monotonic() < deadline:
            values += [m.value() for m in consumer.consume(1000, timeout=0.5) if not m.error()]
    finally:
        consumer.close()
    return values
