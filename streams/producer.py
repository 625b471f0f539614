"""Produce lead-events to Kafka in the Confluent wire format, keyed by lead id."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from confluent_kafka import Producer

from domain.events import LeadEvent
from streams.codec import event_to_record
from streams.wire import LEAD_EVENT_SCHEMA_NEWEST, AvroTopic, SchemaCatalog


@dataclass
class ProduceReport:
    sent: int = 0
    failed: int = 0
    seconds: float = 0.0
    sent_at: dict[str, float] = field(default_factory=dict)  # event_id -> wall time

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


def warm_up(producer: Producer, topic: str, settle_s: float = 1.0) -> Producer:
    """Connect ``producer`` and let it settle before its first timed message.

    An idempotent producer holds its first messages until the broker has given it a
    producer id (about 0.5 s here); anything timing those messages would count that
    start-up as latency. The demo and the latency bench's generator both wait here."""
    producer.list_topics(topic, timeout=10)
    settled = time.monotonic() + settle_s
    while time.monotonic() < settled:
        producer.poll(0.05)
    return producer


def lead_event_encoder(catalog: SchemaCatalog, topic: str) -> AvroTopic:
    """The lead-events encoder of the engine's producers: the newest lead_event schema
    (v3), so attributes reach Kafka; registered under ``<topic>-value``."""
    return AvroTopic(catalog, topic, LEAD_EVENT_SCHEMA_NEWEST)


def produce_events(
    producer: Producer,
    topic: str,
    encoder: AvroTopic,
    events: Iterable[LeadEvent],
    *,
    rate: float | None = None,
    track_send_times: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> ProduceReport:
    """Send events; with ``rate`` they leave on an open-loop schedule (never waiting on replies)."""
    report = ProduceReport()
    errors: list[str] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    started = time.perf_counter()
    for i, ev in enumerate(events):
        if rate:
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        value = encoder.encode(event_to_record(ev))
        while True:
            try:
                producer.produce(
                    topic, key=ev.lead_id.encode(), value=value, on_delivery=on_delivery
                )
                break
            except BufferError:
                producer.poll(0.05)  # local queue full: let deliveries drain
        if track_send_times:
            report.sent_at[ev.event_id] = time.time()
        report.sent += 1
        if i % 1000 == 0:
            producer.poll(0)
            if on_progress:
                on_progress(report.sent)
    producer.flush(60)
    report.seconds = time.perf_counter() - started
    report.failed = len(errors)
    report.sent -= report.failed
    if on_progress:
        on_progress(report.sent)
    return report
