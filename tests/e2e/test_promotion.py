"""A promotion under load: a running worker switches model versions between batches,
without losing a lead-event or scoring one twice."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from adapters.eventstore import SCORED_TOPIC, open_store
from adapters.settings import Settings, settings_env
from devtools.engine_processes import stop_worker, wait_for_group
from devtools.workload import generate
from streams.producer import produce_events
from streams.relay import kafka_producer
from streams.wire import LEAD_EVENT_SCHEMA, AvroTopic, SchemaCatalog
from tests.support.models import copy_model
from tests.support.net import free_port
from tests.support.worker import metric, start, wait_until

pytestmark = pytest.mark.e2e


def test_a_promotion_under_load_switches_versions_once_and_loses_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    copy_model(model_dir, "v1")
    copy_model(model_dir, "v2")
    s = dataclasses.replace(
        settings,
        model_dir=str(model_dir),
        model_version="v1",
        model_refresh_s=0.5,
        metrics_port=free_port(),
        batch_size=200,
    )
    workload = list(generate(3, 300, 6_000, seed=5))
    encoder = AvroTopic(SchemaCatalog.from_settings(s), s.topic_lead_events, LEAD_EVENT_SCHEMA)
    worker = start(s, tmp_path / "worker.log")
    try:
        wait_for_group(s, worker, timeout=120)
        # The load: small chunks at about 1,000 events/s while the promotion happens.
        sent: list[int] = []

        def load() -> None:
            producer = kafka_producer(s.kafka)
            for i in range(0, len(workload), 100):
                report = produce_events(
                    producer, s.topic_lead_events, encoder, workload[i : i + 100]
                )
                sent.append(report.sent)
                time.sleep(0.1)

        loader = threading.Thread(target=load)
        loader.start()
        received = "leadscore_lead_events_total"
        wait_until(lambda: metric(s.metrics_port, received, "applied") >= 1_500, 60, "load")
        promoted = subprocess.run(
            [sys.executable, "-m", "leadscore.cli", "models", "promote", "v2"],
            env={**os.environ, **settings_env(s)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr
        loader.join(60)
        assert sum(sent) == len(workload)
        wait_until(
            lambda: metric(s.metrics_port, received, "received") >= len(workload), 120, "all"
        )
    finally:
        stop_worker(worker)

    store = open_store(s.pg_dsn, cache_size=0)
    try:
        notes = list(store.all_notifications())
        scores = [store.to_event(n) for n in notes if n.topic == SCORED_TOPIC]
    finally:
        store.close()
    # Nothing lost, nothing applied twice: one stored domain event per lead-event.
    assert len(notes) - len(scores) == len(workload)
    # Nothing scored twice: each lead-event caused at most one score.
    causes = Counter(ev.caused_by_event_id for ev in scores)
    assert max(causes.values()) == 1
    # One switch, in log order: every v1 score before every v2 score.
    versions = [ev.model_version for ev in scores]
    switch = versions.index("v2")
    assert switch > 0 and set(versions[:switch]) == {"v1"} and set(versions[switch:]) == {"v2"}
