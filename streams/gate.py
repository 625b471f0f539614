"""The ingress gate: tenants' own producers write to per-org topics, the gate lets through
only lead-events of that org.

Kafka does not tell a consumer who produced a message, so the producer's identity is the
topic it could write to: ``leadscore orgs grant-producer P --org X`` gives the principal
``User:P`` an ACL to write ``<lead-events>.org.X`` and nothing else (the shared
lead-events topic is the engine's own). The gate consumes every such topic (it lists the
broker's topics every ``look_every_s`` and subscribes to the org topics by name,
so a new grant is picked up within that time) and for each message:

- a lead-event of org X is forwarded, bytes and headers as they came, to lead-events,
  keyed by its lead id as the engine's own producers key them (per-lead order);
- a lead-event of another org is dead-lettered with reason ``org_not_allowed``;
- a message that is not a valid lead-event is dead-lettered with the reason the worker
  would give it (it never reaches the shared topic).

Why names and not librdkafka's regex subscription (``^lead-events[.]org[.].+``): librdkafka
compiles the regex anew for every topic of every metadata refresh, which on a broker of
2,800 topics cost the idle worker 1.8% of a core (perf: ``re_compile_internal`` under
``rd_kafka_metadata_topic_match``); listing the topics and matching their prefix here
costs 14 ms of CPU per look (docs/performance.md, "An idle stack, and waking on work").

Offsets are committed only after the forwarded messages and the letters are
acknowledged; a crash in between forwards a message twice, which the event store's
idempotence by event id absorbs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

from adapters.topics import org_of_topic
from streams import metrics
from streams.dlq import DeadLetter, DeadLetterSink, RawMessage, Reason, normalize_headers
from streams.processor import Decoder, decode_message

log = structlog.get_logger(__name__)

INGRESS_HEADER = "leadscore.ingress"  # topic:partition:offset the gate forwarded it from
_BATCH = 500


class Gate:
    def __init__(
        self,
        kafka: Mapping[str, str],
        *,
        lead_events_topic: str,
        group: str,
        catalog: Decoder,
        producer: Producer,
        dead_letters: DeadLetterSink,
        look_every_s: float = 15.0,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.topic = lead_events_topic
        self.catalog = catalog
        self.producer = producer
        self.dead_letters = dead_letters
        self.now = now
        self.consumer = Consumer(
            {
                **kafka,
                "group.id": group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "log_level": 3,
            }
        )
        self.look_every_s = look_every_s
        self._looked_at = float("-inf")
        self.subscribed: frozenset[str] = frozenset()

    def look(self) -> frozenset[str]:
        """Subscribe to the org topics the broker has now (a changed set rebalances the
        gate's group; uncommitted messages come again, which the store absorbs)."""
        self._looked_at = time.monotonic()
        try:
            names = self.consumer.list_topics(timeout=5).topics
        except KafkaException as exc:  # keep the current subscription; look again later
            log.warning("gate: topic metadata unavailable", error=str(exc))
            return self.subscribed
        topics = frozenset(name for name in names if org_of_topic(self.topic, name) is not None)
        if topics != self.subscribed:
            if topics:
                self.consumer.subscribe(sorted(topics))
            else:
                self.consumer.unsubscribe()
            log.info("gate subscribed", org_topics=len(topics))
            self.subscribed = topics
        return topics

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                self.step(timeout=1.0, stop=stop)
        finally:
            self.close()

    def close(self) -> None:
        self.consumer.close()
        self.dead_letters.letters_log.close()  # its PostgreSQL connection

    def step(self, timeout: float = 1.0, stop: threading.Event | None = None) -> int:
        """Pass one batch through; return how many messages it held. With no org topic
        to consume, wait ``timeout`` as a consume would, or until ``stop`` is set."""
        if time.monotonic() - self._looked_at >= self.look_every_s:
            self.look()
        if not self.subscribed:
            if stop is None:
                time.sleep(timeout)
            else:
                stop.wait(timeout)
            return 0
        messages = [m for m in self.consumer.consume(_BATCH, timeout=timeout) if not self._error(m)]
        if not messages:
            return 0
        letters: list[DeadLetter] = []
        errors: list[str] = []

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(str(err))

        now = self.now()
        forwarded = 0
        for m in messages:
            raw = _raw(m)
            org = org_of_topic(self.topic, raw.topic)
            decoded = decode_message(raw, self.catalog, now=now)
            if isinstance(decoded, DeadLetter):
                # The tenant whose topic it came in on sent it: its letter, in the log.
                letters.append(replace(decoded, org_id=org))
            elif decoded.org_id != org:
                letters.append(
                    DeadLetter(
                        raw,
                        Reason.ORG_NOT_ALLOWED,
                        f"a lead-event of org {decoded.org_id!r} on the topic of org {org!r}",
                        "OrgNotAllowed",
                        org,
                    )
                )
            else:
                headers = [*raw.headers, (INGRESS_HEADER, _origin(raw).encode())]
                self.producer.produce(
                    self.topic,
                    key=decoded.lead_id.encode(),
                    value=raw.value,
                    headers=headers,
                    on_delivery=on_delivery,
                )
                forwarded += 1
        remaining = self.producer.flush(30)
        if errors or remaining:
            raise RuntimeError(f"gate: {len(errors)} failed, {remaining} unacknowledged")
        if letters:
            self.dead_letters.publish(letters)
            for letter in letters:
                metrics.GATE_MESSAGES.labels(str(letter.reason)).inc()
        self.consumer.commit(asynchronous=False)
        metrics.GATE_MESSAGES.labels("forwarded").inc(forwarded)
        log.debug("gate batch", forwarded=forwarded, dead_lettered=len(letters))
        return len(messages)

    @staticmethod
    def _error(m: Message) -> bool:
        err = m.error()
        if err is None:
            return False
        if err.code() != KafkaError._PARTITION_EOF:
            log.warning("gate consume error", error=str(err))
        return True


def _raw(m: Message) -> RawMessage:
    _kind, ts = m.timestamp()
    return RawMessage(
        value=m.value(),
        key=m.key(),
        headers=normalize_headers(m.headers()),
        topic=m.topic() or "",
        partition=m.partition() or 0,
        offset=m.offset() or 0,
        timestamp_ms=ts if ts and ts > 0 else None,
    )


def _origin(raw: RawMessage) -> str:
    return f"{raw.topic}:{raw.partition}:{raw.offset}"
