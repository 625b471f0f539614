"""Kafka topic administration and a produce/consume health check (confluent-kafka)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ClusterMetadata,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from adapters.settings import Settings

log = structlog.get_logger(__name__)


class TopicError(RuntimeError):
    """Topics could not be created, configured or described, or Kafka did not answer."""


HEALTH_TOPIC = "leadscore.healthcheck"
# Tenants' producers write to <lead-events>.org.<org> (streams/gate.py, adapters/kafka_access.py).
ORG_TOPIC_INFIX = ".org."
# Quiet librdkafka: while a broker boots its connection errors are expected and would
# otherwise be printed on stderr; failures still surface as exceptions and timeouts here.
_QUIET = {"log_level": 2}


def org_topic(lead_events_topic: str, org_id: str) -> str:
    """The topic the producers of ``org_id`` write to."""
    return f"{lead_events_topic}{ORG_TOPIC_INFIX}{org_id}"


def org_of_topic(lead_events_topic: str, topic: str) -> str | None:
    prefix = lead_events_topic + ORG_TOPIC_INFIX
    return topic[len(prefix) :] if topic.startswith(prefix) and len(topic) > len(prefix) else None


def topic_configs(settings: Settings) -> dict[str, dict[str, str]]:
    """The engine's topics and the settings each must have (``retention.ms``: README,
    "Dead letters"): lead-events as LEADSCORE_LEAD_EVENTS_RETENTION_MS says, dead
    letters as LEADSCORE_DLQ_RETENTION_MS (-1: never expire)."""
    return {
        settings.topic_lead_events: {"retention.ms": str(settings.lead_events_retention_ms)},
        settings.topic_score_events: {},
        settings.topic_dlq: {"retention.ms": str(settings.dlq_retention_ms)},
    }


def ensure_engine_topics(settings: Settings, *, timeout: float = 60.0) -> None:
    """Create lead-events, score-events and the DLQ, and hold them to ``topic_configs``."""
    configs = topic_configs(settings)
    ensure_topics(
        settings.kafka,
        list(configs),
        settings.topic_partitions,
        configs=configs,
        timeout=timeout,
    )


def ensure_topics(
    kafka: Mapping[str, str],
    names: list[str],
    partitions: int,
    *,
    config: Mapping[str, str] | None = None,
    configs: Mapping[str, Mapping[str, str]] | None = None,
    timeout: float = 60.0,
) -> None:
    """Create the missing topics and wait until every partition of each has a leader.

    ``config`` applies to every topic created, ``configs`` to the one it names; an
    existing topic named in ``configs`` gets those entries set (others left alone).
    Existing topics keep their partition count, even another one: adding partitions
    would move keys to other partitions and break per-lead ordering.
    """
    admin = AdminClient({**kafka, **_QUIET})
    deadline = time.monotonic() + timeout
    existing = _metadata(admin, deadline).topics
    missing = [name for name in names if name not in existing]
    for name in names:
        if name in existing and len(existing[name].partitions) != partitions:
            log.warning(
                "topic has a different partition count; left unchanged",
                topic=name,
                partitions=len(existing[name].partitions),
                wanted=partitions,
            )
    if missing:
        # -1 lets the broker apply default.replication.factor, so this also suits a real cluster.
        new = [
            NewTopic(n, partitions, -1, config={**(config or {}), **(configs or {}).get(n, {})})
            for n in missing
        ]
        for name, future in admin.create_topics(new, request_timeout=15.0).items():
            try:
                future.result()
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise TopicError(f"could not create topic {name}: {exc}") from exc
    present = {n: dict(c) for n, c in (configs or {}).items() if n in existing and c}
    if present:
        _set_configs(admin, present, deadline)
    while True:
        pending = _without_leaders(_metadata(admin, deadline), names)
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise TopicError(f"topics without partition leaders after {timeout:.0f}s: {pending}")
        time.sleep(0.1)


def topics_containing(kafka: Mapping[str, str], fragments: Iterable[str]) -> list[str]:
    """The broker's topics whose names contain any of ``fragments`` (e.g. a run's tag)."""
    wanted = [f for f in fragments if f]
    if not wanted:
        return []
    admin = AdminClient({**kafka, **_QUIET})
    names = _metadata(admin, time.monotonic() + 15.0).topics
    return sorted(n for n in names if any(f in n for f in wanted))


def delete_topics(kafka: Mapping[str, str], names: Iterable[str], *, timeout: float = 30.0) -> None:
    """Delete the topics and return once the broker no longer lists them; one that is
    already gone is not an error."""
    names = list(names)
    if not names:
        return
    admin = AdminClient({**kafka, **_QUIET})
    deadline = time.monotonic() + timeout
    failed = []
    for name, future in admin.delete_topics(names, operation_timeout=timeout).items():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                failed.append(f"{name}: {exc}")
    if failed:
        raise TopicError(f"could not delete topics: {'; '.join(failed)}")
    while left := [n for n in names if n in _metadata(admin, deadline).topics]:
        if time.monotonic() >= deadline:
            raise TopicError(f"topics still listed {timeout:.0f}s after deletion: {left[:5]}")
        time.sleep(0.1)


def _set_configs(
    admin: AdminClient, configs: Mapping[str, Mapping[str, str]], deadline: float
) -> None:
    """Set the entries on existing topics; return once the broker reports them."""
    resources = [
        ConfigResource(
            ResourceType.TOPIC,
            name,
            incremental_configs=[
                ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
                for k, v in entries.items()
            ],
        )
        for name, entries in configs.items()
    ]
    for resource, future in admin.incremental_alter_configs(resources).items():
        try:
            future.result()
        except KafkaException as exc:
            raise TopicError(f"could not configure topic {resource.name}: {exc}") from exc
    for name, entries in configs.items():
        while _described(admin, name, entries) != dict(entries):
            if time.monotonic() >= deadline:
                raise TopicError(f"topic {name} does not report {dict(entries)} yet")
            time.sleep(0.1)


def _described(admin: AdminClient, name: str, entries: Mapping[str, str]) -> dict[str, str]:
    found = _describe(admin, name)
    return {k: found.get(k, "") for k in entries}


def topic_config(kafka: Mapping[str, str], name: str) -> dict[str, str]:
    """A topic's effective configuration, as the broker reports it."""
    return _describe(AdminClient({**kafka, **_QUIET}), name)


def _describe(admin: AdminClient, name: str) -> dict[str, str]:
    resource = ConfigResource(ResourceType.TOPIC, name)
    try:
        entries = admin.describe_configs([resource])[resource].result(timeout=15)
    except KafkaException as exc:
        raise TopicError(f"could not describe topic {name}: {exc}") from exc
    return {k: str(e.value) for k, e in entries.items()}


def _metadata(admin: AdminClient, deadline: float) -> ClusterMetadata:
    # Listing all topics, not one by name: a named metadata request may auto-create the topic.
    try:
        return admin.list_topics(timeout=max(1.0, deadline - time.monotonic()))
    except KafkaException as exc:
        raise TopicError(f"Kafka metadata unavailable: {exc}") from exc


def _without_leaders(metadata: ClusterMetadata, names: list[str]) -> list[str]:
    pending = []
    for name in names:
        topic = metadata.topics.get(name)
        ready = (
            topic is not None
            and topic.error is None
            and bool(topic.partitions)
            and all(p.leader >= 0 and p.error is None for p in topic.partitions.values())
        )
        if not ready:
            pending.append(name)
    return pending


def round_trip(kafka: Mapping[str, str], topic: str = HEALTH_TOPIC, timeout: float = 30.0) -> float:
    """Produce one record and read it back; return the seconds it took."""
    started = time.monotonic()
    ensure_topics(kafka, [topic], 1, config={"retention.ms": "3600000"}, timeout=timeout)
    token = uuid.uuid4().hex.encode()
    delivered: list[tuple[KafkaError | None, Message]] = []
    producer = Producer({**kafka, "acks": "all", **_QUIET})
    producer.produce(
        topic, value=token, partition=0, on_delivery=lambda err, msg: delivered.append((err, msg))
    )
    if producer.flush(timeout) or not delivered:
        raise TopicError(
            f"Kafka at {kafka['bootstrap.servers']}: produce to {topic} not acknowledged"
        )
    err, msg = delivered[0]
    if err is not None:
        raise TopicError(f"Kafka at {kafka['bootstrap.servers']}: produce to {topic} failed: {err}")
    consumer = Consumer(
        {
            **kafka,
            "group.id": "leadscore-healthcheck",
            "enable.auto.commit": False,
            **_QUIET,
        }
    )
    try:
        # Assigning the exact offset avoids a consumer-group join, which is slower.
        consumer.assign([TopicPartition(topic, 0, msg.offset())])
        deadline = started + timeout
        while time.monotonic() < deadline:
            record = consumer.poll(0.2)
            if record is None:
                continue
            if record.error() is not None:
                raise TopicError(
                    f"Kafka at {kafka['bootstrap.servers']}: consume failed: {record.error()}"
                )
            if record.value() == token:
                return time.monotonic() - started
    finally:
        consumer.close()
    raise TopicError(
        f"Kafka at {kafka['bootstrap.servers']}: produced record not read back in {timeout:.0f}s"
    )
