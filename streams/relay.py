"""The outbox relay: stored LeadScored events -> score-events on Kafka, at least once.

It follows the event store's notification log from a position kept in PostgreSQL.
The position advances only after Kafka acknowledged every message before it, so a
crash republishes (same event_id) rather than loses; nothing unstored is sent.
One relay publishes at a time: a PostgreSQL advisory lock elects it among workers.
Workers and `leadscore relay` run it under a supervisor (streams/worker.py, relay_work):
an error it does not handle itself closes it and starts a new one after a backoff.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping
from typing import Any
from uuid import UUID

import psycopg
import structlog
from confluent_kafka import KafkaException, Producer
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind

from adapters.eventstore import (
    DATABASE_UNAVAILABLE,
    SCORED_TOPIC,
    LeadStore,
)
from adapters.positions import LogWaiter, Tracking
from adapters.topics import org_of_topic, org_topic
from domain.lead import score_event_id
from domain.transitions import SCORE_UPDATED, transitions, typed_event_id
from streams import metrics
from streams.tracing import TRACEPARENT, TraceContexts, Tracing, context_of, traceparent_of
from streams.wire import AvroTopic

log = structlog.get_logger(__name__)

_LOCK_KEY = "leadscore.relay.score-events"


_NO_SPAN = contextlib.nullcontext(None)


class PublishError(RuntimeError):
    """Kafka did not acknowledge every score-event of a batch."""


def score_event_key(org_id: str, lead_id: str) -> bytes:
    """The Kafka key of a lead's score-events: ``org/lead``.

    Org ids hold no ``/`` (domain.events.ORG_ID_PATTERN), so the first ``/`` splits it
    even when the lead id has one, and a subscriber filters an org by the prefix ``org/``.
    One key per lead keeps each lead's score-events in order on one partition.
    """
    return f"{org_id}/{lead_id}".encode()


def score_records(event: Any, position: int) -> list[dict[str, Any]]:
    """The score-events of a stored LeadScored: lead.score.updated, then the typed
    events the same score is (lead.qualified, ...; domain/transitions.py)."""
    base = score_record(event, position)
    kinds = transitions(
        base["previous_grade"], base["grade"], base["previous_stage"], base["stage"]
    )
    score_id = UUID(base["event_id"])
    return [base] + [
        {**base, "event_type": kind, "event_id": str(typed_event_id(score_id, kind))}
        for kind in kinds
    ]


def score_record(event: Any, position: int) -> dict[str, Any]:
    """The score-event (seed envelope) for a stored LeadScored domain event."""
    return {
        "event_id": str(score_event_id(event.originator_id, event.originator_version)),
        "event_type": SCORE_UPDATED,
        "occurred_at": event.scored_at,
        "org_id": event.org_id,
        "lead_id": event.lead_id,
        "previous_score": event.previous_score,
        "new_score": event.score,
        "components": dict(event.components),
        "grade": event.grade,
        "model_version": event.model_version,
        "top_factors": list(event.factors),
        # Scores stored before these fields existed have none.
        "stage": getattr(event, "stage", None),
        "previous_stage": getattr(event, "previous_stage", None),
        "previous_grade": getattr(event, "previous_grade", None),
        "rules_version": getattr(event, "rules_version", None),
        "caused_by_event_id": event.caused_by_event_id,
        "position": position,
        "metadata": {"source": "leadscore", "version": "1.0"},
    }


def relay_tracking(dsn: str, name: str) -> Tracking:
    """The position and election of a log follower named ``name`` (the relay, the
    webhook dispatcher)."""
    return Tracking(dsn, name, lock_key=f"{_LOCK_KEY}:{name}")


def kafka_producer(kafka: Mapping[str, str], **overrides: Any) -> Producer:
    config = {
        **kafka,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
    }
    config.update(overrides)
    return Producer(config)


class OrgTopics:
    """Which orgs have a score-events topic of their own (``<score-events>.org.<org>``,
    made by `leadscore orgs grant-subscriber`), read from the broker's metadata at most
    every ``refresh_s``."""

    def __init__(self, producer: Producer, topic: str, refresh_s: float = 10.0) -> None:
        self.producer = producer
        self.topic = topic
        self.refresh_s = refresh_s
        self._orgs: frozenset[str] = frozenset()
        self._read_at = float("-inf")

    def orgs(self) -> frozenset[str]:
        now = time.monotonic()
        if now - self._read_at >= self.refresh_s:
            self._read_at = now
            try:
                names = self.producer.list_topics(timeout=5).topics
            except KafkaException as exc:  # keep the last answer; the next batch asks again
                log.warning("topic metadata unavailable", error=str(exc))
                return self._orgs
            self._orgs = frozenset(
                org for name in names if (org := org_of_topic(self.topic, name)) is not None
            )
        return self._orgs


class ScoreEventRelay:
    def __init__(
        self,
        store: LeadStore,
        tracking: Tracking,
        producer: Producer,
        topic: str,
        encoder: AvroTopic,
        *,
        batch_size: int = 5000,
    ) -> None:
        self.store = store
        self.tracking = tracking
        self.producer = producer
        self.topic = topic
        self.encoder = encoder
        self.batch_size = batch_size
        self.position = tracking.get()
        self.tracing = Tracing(None)
        self.contexts: TraceContexts | None = None
        self.org_topics = OrgTopics(producer, topic)

    def use_tracing(self, tracing: Tracing, dsn: str) -> None:
        """Continue each score's trace from its lead-event (streams/tracing.py)."""
        self.tracing = tracing
        if tracing.enabled:
            self.contexts = TraceContexts(dsn)

    def close(self) -> None:
        self.producer.flush(10)
        self.tracking.close()
        if self.contexts is not None:
            self.contexts.close()

    def __enter__(self) -> ScoreEventRelay:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def publish_once(self) -> int:
        """Publish the next batch of stored scores; returns how many scores that was
        (each is one lead.score.updated plus its typed events, if any)."""
        notes = self.store.notifications(self.position, self.batch_size, topics=[SCORED_TOPIC])
        if not notes:
            return 0
        errors: list[str] = []

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(str(err))

        sent = 0
        split = self.org_topics.orgs()
        events = [(note, self.store.to_event(note)) for note in notes]
        parents = self._trace_parents([event for _note, event in events])
        for note, event in events:
            with (
                self.tracing.span(
                    "publish",
                    context=context_of(parents.get(event.caused_by_event_id)) or Context(),
                    kind=SpanKind.PRODUCER,
                    attributes={"messaging.destination.name": self.topic},
                )
                if self.tracing.enabled
                else _NO_SPAN as span
            ):
                headers = [(TRACEPARENT, traceparent_of(span).encode())] if span else None
                key = score_event_key(event.org_id, event.lead_id)
                topics = [self.topic]
                if event.org_id in split:  # and a copy on the org's own topic
                    topics.append(org_topic(self.topic, event.org_id))
                for record in score_records(event, note.id):
                    value = self.encoder.encode(record)
                    for topic in topics:
                        self.producer.produce(
                            topic, key=key, value=value, headers=headers, on_delivery=on_delivery
                        )
                    sent += 1
            self.producer.poll(0)
        remaining = self.producer.flush(30)
        if errors or remaining:
            raise PublishError(f"{len(errors)} failed, {remaining} unacknowledged: {errors[:3]}")
        self.position = notes[-1].id
        self.tracking.set(self.position)
        metrics.SCORE_EVENTS_PUBLISHED.inc(sent)
        return len(notes)

    def _trace_parents(self, events: list[Any]) -> dict[str, str]:
        if self.contexts is None:
            return {}
        try:
            return self.contexts.get(e.caused_by_event_id for e in events)
        except psycopg.Error as exc:  # published untraced rather than not published
            log.warning("trace contexts not read", error=type(exc).__name__)
            return {}

    def run(self, stop: threading.Event) -> None:
        """Publish until ``stop`` is set: get elected, then follow the log, sleeping at its
        head until the store says it stored more (adapters/positions.py: LogWaiter)."""
        waiter = LogWaiter(self.tracking.dsn)
        try:
            self._run(stop, waiter)
        finally:
            waiter.close()

    def _run(self, stop: threading.Event, waiter: LogWaiter) -> None:
        while not stop.is_set():
            try:
                if not self.tracking.try_lock():
                    stop.wait(1.0)
                    continue
                self.position = self.tracking.get()
                log.info("score-event relay elected", position=self.position)
                waiter.listen()  # before the first read: no store in between is missed
                self._follow(stop, waiter)
            except DATABASE_UNAVAILABLE as exc:
                # The lock went with the connection: reconnect and stand again.
                log.warning("relay lost PostgreSQL, reconnecting", error=str(exc))
                stop.wait(1.0)
                self.tracking.reconnect()

    def _follow(self, stop: threading.Event, waiter: LogWaiter) -> None:
        while not stop.is_set():
            try:
                sent = self.publish_once()
            except (PublishError, KafkaException) as exc:
                log.warning("relay retrying", error=str(exc))
                stop.wait(1.0)
                continue
            if sent < self.batch_size:
                waiter.wait(stop)  # at the head: until the next commit (or a second)
