"""A worker whose database turns read-only (a failover) pauses: nothing dead-lettered,
nothing committed; once it is writable again every event is stored and committed."""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import ConsumerGroupTopicPartitions
from confluent_kafka.admin import AdminClient

from adapters.eventstore import open_store
from adapters.settings import Settings
from devtools.engine_processes import stop_worker, wait_for_group
from domain.lead import lead_aggregate_id
from streams.codec import event_to_record
from streams.dlq import read_letters
from streams.relay import kafka_producer
from streams.wire import LEAD_EVENT_SCHEMA, AvroTopic, SchemaCatalog
from tests.support.factories import created
from tests.support.net import free_port
from tests.support.worker import metric, start, wait_until

pytestmark = pytest.mark.e2e


def committed(s: Settings) -> int:
    admin = AdminClient(
        {
            **s.kafka,
        }
    )
    req = ConsumerGroupTopicPartitions(s.consumer_group)
    found = admin.list_consumer_group_offsets([req])[s.consumer_group].result()
    return sum(max(tp.offset, 0) for tp in found.topic_partitions)


def read_only(s: Settings, on: bool) -> None:
    base, name = s.pg_dsn.rsplit("/", 1)
    with psycopg.connect(f"{base}/leadscore", autocommit=True) as conn:
        conn.execute(
            f'ALTER DATABASE "{name}" SET default_transaction_read_only = '
            + ("on" if on else "off")
        )
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (name,),
        )


def stored(s: Settings, ids: list[tuple[object, str]]) -> bool:
    store = open_store(s.pg_dsn, cache_size=0)  # a new session: the switch ends the old ones
    try:
        return store.stored_event_ids(ids) == set(ids)
    finally:
        store.close()


def health(port: int) -> dict:  # type: ignore[type-arg]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        with exc:
            return json.loads(exc.read())  # type: ignore[no-any-return]


def test_a_read_only_database_pauses_the_worker_without_dead_letters(
    settings: Settings, tmp_path: Path
) -> None:
    s = dataclasses.replace(settings, metrics_port=free_port())
    encoder = AvroTopic(SchemaCatalog.from_settings(s), s.topic_lead_events, LEAD_EVENT_SCHEMA)
    producer = kafka_producer(s.kafka)

    def send(tag: str, n: int) -> list[tuple[object, str]]:
        events = [created(lead=f"{tag}-{i}") for i in range(n)]
        for ev in events:
            producer.produce(
                s.topic_lead_events,
                key=ev.lead_id.encode(),
                value=encoder.encode(event_to_record(ev)),
            )
        assert producer.flush(30) == 0
        return [(lead_aggregate_id(ev.org_id, ev.lead_id), ev.event_id) for ev in events]

    log = tmp_path / "worker.log"
    worker = start(s, log)
    try:
        wait_for_group(s, worker, timeout=120)
        first = send("first", 10)
        wait_until(lambda: stored(s, first), 60, "the first events")
        wait_until(lambda: committed(s) == 10, 60, "the first offsets")
        up = health(s.metrics_port)
        assert up["ready"] and {"relay", "projections"} <= set(up["tasks"]), up

        read_only(s, True)
        try:
            second = send("second", 20)
            wait_until(
                lambda: (
                    metric(
                        s.metrics_port,
                        'leadscore_batch_retries_total{error="DatabaseUnavailableError"}',
                    )
                    >= 2
                ),
                60,
                "the worker to retry the batch",
            )
            time.sleep(3)
            assert worker.poll() is None
            assert committed(s) == 10, "a batch was committed while it could not be stored"
            assert metric(s.metrics_port, "leadscore_lead_events_total", "dead_lettered") == 0
        finally:
            read_only(s, False)
        wait_until(lambda: stored(s, second), 90, "the paused events")
        wait_until(lambda: committed(s) == 30, 60, "every offset")
        assert read_letters(s.kafka, s.topic_dlq) == []
        wait_until(lambda: health(s.metrics_port)["ready"], 60, "every task to be up again")
    finally:
        stop_worker(worker)
