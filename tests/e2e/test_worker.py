"""The worker as a real process on the real broker and database, end to end."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from adapters.eventstore import open_store
from adapters.settings import Settings
from devtools.engine_processes import stop_worker, wait_for_group
from devtools.workload import generate
from domain.events import EventType
from domain.lead import lead_aggregate_id
from domain.transitions import SCORE_UPDATED
from streams.codec import event_to_record
from streams.dlq import read_letters
from streams.producer import produce_events
from streams.relay import kafka_producer, score_records
from streams.wire import LEAD_EVENT_SCHEMA, AvroTopic, SchemaCatalog
from tests.support.factories import created
from tests.support.net import free_port
from tests.support.pipeline import consume_all
from tests.support.readmodels import (
    expected_state,
    projected_position,
    read_models,
    read_models_expected,
)
from tests.support.worker import committed_all, metric, start, wait_for_events, wait_until

pytestmark = pytest.mark.e2e


def reset_offsets(settings: Settings) -> None:
    admin = AdminClient(
        {
            **settings.kafka,
        }
    )
    parts = [
        TopicPartition(settings.topic_lead_events, p, 0) for p in range(settings.topic_partitions)
    ]
    req = ConsumerGroupTopicPartitions(settings.consumer_group, parts)
    admin.alter_consumer_group_offsets([req])[settings.consumer_group].result()


def test_worker_scores_every_lead_and_redelivery_changes_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    s = dataclasses.replace(settings, metrics_port=free_port())
    workload = list(generate(3, 200, 2_000, seed=11))
    leads = {(e.org_id, e.lead_id) for e in workload}
    encoder = AvroTopic(SchemaCatalog.from_settings(s), s.topic_lead_events, LEAD_EVENT_SCHEMA)
    report = produce_events(kafka_producer(s.kafka), s.topic_lead_events, encoder, workload)
    assert report.sent == len(workload) and report.failed == 0
    bad = produce_bad_messages(s, encoder)
    total = len(workload) + len(bad)

    log = tmp_path / "worker.log"
    worker = start(s, log)
    try:
        wait_for_group(s, worker, timeout=120)
        wait_for_events(
            s.metrics_port, "received", total, 120, "the worker to take every lead-event"
        )
        store = open_store(s.pg_dsn, cache_size=0)
        ids = [lead_aggregate_id(org, lead) for org, lead in leads]
        wait_until(lambda: committed_all(s), 60, "offsets to be committed")
        stored = store.load(ids)
        assert all(lead is not None for lead in stored.values())
        # Every lead-event is in the store, by its id (once: see the counts by kind below).
        pairs = {(lead_aggregate_id(e.org_id, e.lead_id), e.event_id) for e in workload}
        assert store.stored_event_ids(list(pairs)) == pairs

        # The bad messages are in the DLQ byte for byte, and every message is accounted for.
        assert_counted(s.metrics_port, total, dead_lettered=len(bad))
        letters = read_letters(s.kafka, s.topic_dlq)
        assert sorted((x.key, x.value) for x in letters) == sorted(bad)
        assert {x.reason for x in letters} == {"undecodable", "unknown_schema", "invalid"}
        assert all(x.header("dlq.source_topic") == s.topic_lead_events for x in letters)
        assert all(int(x.header("dlq.source_offset")) >= 0 for x in letters)

        # The event store holds exactly the applied events: one domain event per lead-event.
        notes = []
        while batch := store.notifications(notes[-1].id if notes else 0, 5000):
            notes.extend(batch)
        kinds = Counter(n.topic.rsplit(".", 1)[-1] for n in notes)
        produced = Counter(str(e.event_type) for e in workload)
        assert kinds["LeadCreated"] == produced[EventType.LEAD_CREATED] == len(leads)
        assert kinds["ActivityRecorded"] == produced[EventType.ACTIVITY_RECORDED]
        assert kinds["LeadUpdated"] == produced[EventType.LEAD_UPDATED]
        assert kinds["LeadConverted"] == produced[EventType.LEAD_CONVERTED]
        assert kinds["LeadDisqualified"] == produced[EventType.LEAD_DISQUALIFIED]

        # Every stored score reached score-events, and every lead got at least one.
        n_scores = kinds["LeadScored"]
        wait_until(
            lambda: metric(s.metrics_port, "leadscore_score_events_published_total") >= n_scores,
            60,
            "the relay to publish every score",
        )
        catalog = SchemaCatalog.from_settings(s)
        scored = [n for n in notes if n.topic.endswith("LeadScored")]
        messages = sum(len(score_records(store.to_event(n), n.id)) for n in scored)
        published = [catalog.decode(v) for _k, v in consume_all(s, expected=messages)]
        assert len(published) == messages
        # Typed events (lead.qualified, ...) repeat a score under their own ids.
        records = [r for r in published if r["event_type"] == SCORE_UPDATED]
        assert len(records) == n_scores
        assert {(r["org_id"], r["lead_id"]) for r in records} == leads
        assert all(0 <= r["new_score"] <= 100 and r["model_version"] for r in records)
        assert len({r["event_id"] for r in records}) == n_scores

        # The read models the worker projects converge to the event store's state.
        want = expected_state(s)
        wait_until(
            lambda: asyncio.run(projected_position(s)) >= want["head"], 60, "the projections"
        )
        assert asyncio.run(read_models(s)) == read_models_expected(want)

        # Redeliver everything: reset the group's offsets and run a new worker.
        stop_worker(worker)
        reset_offsets(s)
        worker = start(s, log)
        wait_for_group(s, worker, timeout=120)
        wait_for_events(
            s.metrics_port, "duplicate", len(workload), 120, "the worker to see redelivered events"
        )
        assert metric(s.metrics_port, "leadscore_lead_events_total", "applied") == 0
        wait_for_events(
            s.metrics_port, "received", total, 60, "the worker to take every redelivered message"
        )
        assert_counted(s.metrics_port, total, dead_lettered=len(bad))
        after = []
        while batch := store.notifications(after[-1].id if after else 0, 5000):
            after.extend(batch)
        assert len(after) == len(notes)  # no domain event duplicated, no score re-recorded
        assert asyncio.run(read_models(s)) == read_models_expected(want)
        store.close()
    finally:
        stop_worker(worker)
        print(log.read_text()[-3000:])


def produce_bad_messages(s: Settings, encoder: AvroTopic) -> list[tuple[bytes, bytes]]:
    """Undecodable, unknown schema id, invalid (occurred in the future): (key, value)."""
    future = created(lead="bad-future", at=datetime.now(UTC) + timedelta(days=30))
    valid = encoder.encode(event_to_record(created(lead="bad-schema")))
    bad = [
        (b"bad-garbage", b"garbage: not the wire format"),
        (b"bad-schema", b"\x00\x7f\xff\xff\xf0" + valid[5:]),
        (b"bad-future", encoder.encode(event_to_record(future))),
    ]
    producer = kafka_producer(s.kafka)
    for key, value in bad:
        producer.produce(s.topic_lead_events, key=key, value=value)
    assert producer.flush(30) == 0
    return bad


def assert_counted(port: int, total: int, *, dead_lettered: int) -> None:
    """in = stored + duplicates + dead-lettered, as the worker's metrics say."""
    n = {
        o: metric(port, "leadscore_lead_events_total", o)
        for o in ("received", "applied", "duplicate", "dead_lettered")
    }
    assert n["received"] == total
    assert n["received"] == n["applied"] + n["duplicate"] + n["dead_lettered"]
    assert n["dead_lettered"] == dead_lettered
