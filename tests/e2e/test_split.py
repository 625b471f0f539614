"""A worker that leaves the outbox to `leadscore relay`: it stores and scores, the relay
process publishes every stored score."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.eventstore import SCORED_TOPIC, open_store
from adapters.settings import Settings, settings_env
from devtools.engine_processes import stop_worker, wait_for_group
from devtools.workload import generate
from streams.producer import produce_events
from streams.relay import kafka_producer, score_records
from streams.wire import LEAD_EVENT_SCHEMA, AvroTopic, SchemaCatalog
from tests.support.net import free_port
from tests.support.pipeline import consume_all
from tests.support.worker import metric, start, wait_for_events

pytestmark = pytest.mark.e2e


def test_a_relay_process_publishes_what_a_relayless_worker_stores(
    settings: Settings, tmp_path: Path
) -> None:
    s = dataclasses.replace(
        settings, metrics_port=free_port(), worker_relay=False, worker_projections=""
    )
    workload = list(generate(2, 100, 1_000, seed=4))
    encoder = AvroTopic(SchemaCatalog.from_settings(s), s.topic_lead_events, LEAD_EVENT_SCHEMA)
    report = produce_events(kafka_producer(s.kafka), s.topic_lead_events, encoder, workload)
    assert report.sent == len(workload)
    worker = start(s, tmp_path / "worker.log")
    relay = None
    try:
        wait_for_group(s, worker, timeout=120)
        wait_for_events(
            s.metrics_port, "applied", len(workload), 120, "the worker to apply every lead-event"
        )
        # Stored, but nothing published: the worker has no relay.
        assert metric(s.metrics_port, "leadscore_score_events_published_total") == 0
        assert consume_all(s, expected=1, timeout=3) == []
        env = {**os.environ, **settings_env(dataclasses.replace(s, metrics_port=0))}
        with (tmp_path / "relay.log").open("ab") as out:
            relay = subprocess.Popen(
                [sys.executable, "-m", "leadscore.cli", "relay"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        store = open_store(s.pg_dsn, cache_size=0)
        try:
            notes = [n for n in store.all_notifications([SCORED_TOPIC])]
            expected = sum(len(score_records(store.to_event(n), n.id)) for n in notes)
        finally:
            store.close()
        published = consume_all(s, expected=expected, timeout=60)
        assert len(published) == expected and notes
    finally:
        stop_worker(worker)
        if relay is not None:
            stop_worker(relay)
    assert relay.returncode == 0, (tmp_path / "relay.log").read_text()[-3000:]
