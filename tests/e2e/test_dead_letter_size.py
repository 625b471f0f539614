"""A lead-event the broker accepts but whose dead letter would not fit a Kafka message.

Reproduces issue 15 (item 3): a LeadCreated of ~1,000,273 bytes (a long title) is refused
by validation; its dead letter, the original bytes plus the ``dlq.*`` headers, is over the
producer's ``message.max.bytes``. The worker must still dead-letter it (by reference, the
bytes kept in PostgreSQL), commit it, and score the good event sent right after it; and
``leadscore dlq show/replay`` must still work for the letter.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient
from typer.testing import CliRunner

from adapters.eventstore import open_store
from adapters.settings import Settings, settings_env
from devtools.engine_processes import stop_worker, wait_for_group
from domain.lead import lead_aggregate_id
from leadscore import cli_dlq
from streams.codec import event_to_record
from streams.dlq import PAYLOAD_REF, PAYLOAD_SHA256, SOURCE_OFFSET, read_letters
from streams.relay import kafka_producer
from streams.wire import LEAD_EVENT_SCHEMA, AvroTopic, SchemaCatalog
from tests.support.factories import created
from tests.support.net import free_port
from tests.support.worker import metric, start, wait_until

pytestmark = pytest.mark.e2e

BROKER_LIMIT = 1_048_576  # what the dev broker accepts in one record batch


def huge_created(encoder: AvroTopic, size: int) -> bytes:
    """A LeadCreated whose encoded value is exactly ``size`` bytes (its title pads it)."""
    event = created(lead="huge")
    record = event_to_record(event)
    record["title"] = ""
    base = len(encoder.encode(record))
    # An Avro string's length is a zig-zag varint: 3 bytes from 8,192 up to 1,048,575
    # characters where the empty title's took 1.
    record["title"] = "x" * (size - base - 2)
    value = encoder.encode(record)
    assert len(value) == size
    return value


def test_an_oversized_dead_letter_goes_by_reference_and_the_next_event_is_scored(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = dataclasses.replace(settings, metrics_port=free_port())
    encoder = AvroTopic(SchemaCatalog.from_settings(s), s.topic_lead_events, LEAD_EVENT_SCHEMA)
    huge = huge_created(encoder, 1_000_273)
    good = created(lead="after-huge")
    producer = kafka_producer(s.kafka, **{"message.max.bytes": BROKER_LIMIT})
    # Same key: the same partition, the good event right after the huge one.
    producer.produce(s.topic_lead_events, key=b"same", value=huge, headers=[("trace", b"t1")])
    producer.produce(s.topic_lead_events, key=b"same", value=encoder.encode(event_to_record(good)))
    assert producer.flush(30) == 0

    log = tmp_path / "worker.log"
    worker = start(s, log)
    try:
        wait_for_group(s, worker, timeout=120)
        store = open_store(s.pg_dsn, cache_size=0)
        good_id = (lead_aggregate_id(good.org_id, good.lead_id), good.event_id)
        wait_until(
            lambda: store.stored_event_ids([good_id]) == {good_id} or worker.poll() is not None,
            90,
            "the good event after the huge one to be stored",
        )
        assert worker.poll() is None, log.read_text()[-3000:]
        assert store.stored_event_ids([good_id]) == {good_id}
        store.close()
        wait_until(lambda: committed(s) == 2, 60, "both messages to be committed")
        assert metric(s.metrics_port, "leadscore_dead_letters_published_total") == 1
        (letter,) = read_letters(s.kafka, s.topic_dlq)
        digest = hashlib.sha256(huge).hexdigest()
        assert letter.reason == "invalid"
        assert letter.value is None
        assert letter.header(PAYLOAD_SHA256) == digest
        assert letter.header(PAYLOAD_REF).startswith("postgresql:dead_letter_payloads/")
        assert letter.header(SOURCE_OFFSET) == "0"
        with psycopg.connect(s.pg_dsn) as conn:
            (stored,) = conn.execute(
                "SELECT value FROM dead_letter_payloads WHERE sha256 = %s", (digest,)
            ).fetchone()
        assert bytes(stored) == huge
    finally:
        stop_worker(worker)

    for name, value in settings_env(s).items():
        monkeypatch.setenv(name, value)
    from adapters.settings import get_settings

    get_settings.cache_clear()
    try:
        runner = CliRunner()
        shown = runner.invoke(cli_dlq.app, ["show", letter.ref])
        assert shown.exit_code == 0, shown.output
        assert "1,000,273 bytes" in shown.output and digest in shown.output
        replayed = runner.invoke(cli_dlq.app, ["replay", "--offset", letter.ref])
        assert replayed.exit_code == 0, replayed.output
    finally:
        get_settings.cache_clear()
    # The replay put the original bytes back on lead-events, after the two first messages.
    consumer = Consumer({**s.kafka, "group.id": f"{s.consumer_group}-check"})
    try:
        part = read_letters_partition(s, consumer)
        consumer.assign([TopicPartition(s.topic_lead_events, part, 2)])
        msg = None
        for _ in range(60):
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                break
        assert msg is not None and msg.value() == huge and msg.key() == b"same"
    finally:
        consumer.close()


def committed(s: Settings) -> int:
    """The consumer group's committed offsets on lead-events, summed over partitions."""
    admin = AdminClient(
        {
            **s.kafka,
        }
    )
    req = ConsumerGroupTopicPartitions(s.consumer_group)
    found = admin.list_consumer_group_offsets([req])[s.consumer_group].result()
    return sum(max(tp.offset, 0) for tp in found.topic_partitions)


def read_letters_partition(s: Settings, consumer: Consumer) -> int:
    """The lead-events partition that holds three messages (two sent, one replayed)."""
    for p in range(s.topic_partitions):
        _lo, hi = consumer.get_watermark_offsets(TopicPartition(s.topic_lead_events, p), timeout=10)
        if hi == 3:
            return p
    raise AssertionError("no partition holds the two messages and the replay")
