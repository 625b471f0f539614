"""Fault scenarios with real processes: workers killed with SIGKILL, mid-stream.

After each scenario: every accepted lead-event is in the event store exactly once, every
stored score reached score-events (duplicates only with the same event_id), and the
read models equal the state computed from the event store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from adapters.eventstore import SCORED_TOPIC, open_store
from adapters.settings import Settings
from devtools.engine_processes import stop_worker, wait_for_group
from devtools.workload import generate
from domain.lead import lead_aggregate_id, score_event_id
from domain.transitions import SCORE_UPDATED
from streams.producer import produce_events
from streams.relay import kafka_producer, score_records
from streams.wire import LEAD_EVENT_SCHEMA, AvroTopic, SchemaCatalog
from tests.support.net import free_port
from tests.support.pipeline import consume_all
from tests.support.readmodels import (
    expected_state,
    projected_position,
    read_models,
    read_models_expected,
)
from tests.support.worker import committed_all, metric, start, wait_until

pytestmark = pytest.mark.faults

EVENTS, LEADS, ORGS = 20_000, 2_000, 4


def produce(s: Settings) -> list[Any]:
    workload = list(generate(ORGS, LEADS, EVENTS, seed=31))
    encoder = AvroTopic(SchemaCatalog.from_settings(s), s.topic_lead_events, LEAD_EVENT_SCHEMA)
    report = produce_events(kafka_producer(s.kafka), s.topic_lead_events, encoder, workload)
    assert report.sent == len(workload) and report.failed == 0
    return workload


def all_applied(s: Settings, workload: list[Any]) -> bool:
    store = open_store(s.pg_dsn, cache_size=0)
    try:
        pairs = {(lead_aggregate_id(e.org_id, e.lead_id), e.event_id) for e in workload}
        return store.stored_event_ids(list(pairs)) == pairs
    finally:
        store.close()


def check_invariants(s: Settings, workload: list[Any]) -> dict[str, int]:
    """The guarantees that must hold after any fault; returns the counts for the report."""
    store = open_store(s.pg_dsn, cache_size=0)
    try:
        notes = []
        while batch := store.notifications(notes[-1].id if notes else 0, 10_000):
            notes.extend(batch)
        pairs = {(lead_aggregate_id(e.org_id, e.lead_id), e.event_id) for e in workload}
        stored = store.stored_event_ids(list(pairs))
        messages = sum(
            len(score_records(store.to_event(n), n.id)) for n in notes if n.topic == SCORED_TOPIC
        )
    finally:
        store.close()
    # Every accepted event applied exactly once: one domain event per lead-event.
    assert stored == pairs, "an accepted lead-event is missing from the event store"
    lead_event_notes = [n for n in notes if n.topic != SCORED_TOPIC]
    assert len(lead_event_notes) == len(workload), "a lead-event was stored twice"

    # Every stored score reached score-events; a duplicate only with the same event_id.
    stored_ids = {
        str(score_event_id(n.originator_id, n.originator_version))
        for n in notes
        if n.topic == SCORED_TOPIC
    }
    catalog = SchemaCatalog.from_settings(s)
    # Typed events (lead.qualified, ...) repeat a score under their own ids; count scores.
    records = [catalog.decode(v) for _k, v in consume_all(s, expected=messages)]
    published = [r["event_id"] for r in records if r["event_type"] == SCORE_UPDATED]
    assert set(published) == stored_ids, "a stored score is missing from score-events"
    duplicates = len(published) - len(set(published))

    # Read models equal the state computed from the event store.
    want = expected_state(s)
    wait_until(lambda: asyncio.run(projected_position(s)) >= want["head"], 60, "projections")
    assert asyncio.run(read_models(s)) == read_models_expected(want)
    return {
        "events": len(workload),
        "applied_once": len(stored),
        "lost": len(pairs - stored),
        "applied_twice": len(lead_event_notes) - len(stored),
        "scores": len(stored_ids),
        "score_event_duplicates": duplicates,
    }


def wait_mid_stream(s: Settings) -> None:
    received = lambda: metric(s.metrics_port, "leadscore_lead_events_total", "received")  # noqa: E731
    wait_until(lambda: received() >= 2_000, 120, "the worker to be mid-stream")


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def test_worker_killed_at_random_moments(settings: Settings, tmp_path: Path) -> None:
    s = dataclasses.replace(settings, metrics_port=free_port(), batch_size=500)
    workload = produce(s)
    log = tmp_path / "worker.log"
    rng = random.Random(5)
    kills = 0
    worker = start(s, log)
    try:
        for _ in range(4):
            wait_for_group(s, worker, timeout=120)
            # Let it work for a random while, then SIGKILL it mid-batch.
            time.sleep(rng.uniform(0.5, 3.0))
            kill(worker)
            kills += 1
            worker = start(s, log)
        wait_for_group(s, worker, timeout=120)
        wait_until(lambda: all_applied(s, workload), 180, "every event to be applied")
        wait_until(lambda: committed_all(s), 60, "offsets to be committed")
        counts = check_invariants(s, workload)
    finally:
        stop_worker(worker)
    assert kills == 4
    print(f"SIGKILL x{kills}: {counts}")


def test_two_workers_one_killed_mid_stream(settings: Settings, tmp_path: Path) -> None:
    s = dataclasses.replace(settings, batch_size=500)
    a = start(dataclasses.replace(s, metrics_port=free_port()), tmp_path / "a.log")
    b_settings = dataclasses.replace(s, metrics_port=free_port())
    b = start(b_settings, tmp_path / "b.log")
    try:
        wait_for_group(s, a, timeout=120)
        workload = produce(s)
        wait_until(
            lambda: metric(b_settings.metrics_port, "leadscore_lead_events_total", "received") > 0,
            60, "the second worker to take events",
        )  # fmt: skip
        kill(b)
        wait_until(lambda: all_applied(s, workload), 180, "the survivor to apply every event")
        wait_until(lambda: committed_all(s), 60, "offsets to be committed")
        counts = check_invariants(s, workload)
    finally:
        stop_worker(a)
        if b.poll() is None:
            stop_worker(b)
    print(f"two workers, one SIGKILLed: {counts}")


def restart_service(s: Settings, name: str, outage: float) -> None:
    """Stop a service the test session started, keep it down a while, start it again."""
    from devtools import services as stack

    (row,) = [r for r in stack.status(s, only=[name])]
    assert "started by us" in row.state, f"{name} is external ({row.state}): cannot restart it"
    stack.down(s, only=[name])
    time.sleep(outage)
    stack.up(s, only=[name])


@pytest.mark.parametrize("service", ["kafka", "postgres"])
def test_service_restarted_mid_stream(settings: Settings, tmp_path: Path, service: str) -> None:
    s = dataclasses.replace(settings, metrics_port=free_port(), batch_size=500)
    workload = produce(s)
    worker = start(s, tmp_path / "worker.log")
    try:
        wait_for_group(s, worker, timeout=120)
        wait_mid_stream(s)
        restart_service(s, service, outage=5.0)
        assert worker.poll() is None, "the worker died with the outage"
        wait_until(lambda: all_applied(s, workload), 300, "every event to be applied")
        wait_until(lambda: committed_all(s), 120, "offsets to be committed")
        counts = check_invariants(s, workload)
    finally:
        stop_worker(worker)
    print(f"{service} restarted mid-stream: {counts}")


def test_worker_stopped_while_the_database_is_down(settings: Settings, tmp_path: Path) -> None:
    """A graceful stop must not commit a batch it could not store."""
    from devtools import services as stack

    s = dataclasses.replace(settings, metrics_port=free_port(), batch_size=500)
    workload = produce(s)
    log = tmp_path / "worker.log"
    worker = start(s, log)
    try:
        wait_for_group(s, worker, timeout=120)
        wait_mid_stream(s)
        (row,) = stack.status(s, only=["postgres"])
        assert "started by us" in row.state, f"postgres is external ({row.state})"
        stack.down(s, only=["postgres"])
        time.sleep(3)  # the worker is now retrying a batch it cannot store
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(120)
        stack.up(s, only=["postgres"])
        worker = start(s, log)
        wait_for_group(s, worker, timeout=120)
        wait_until(lambda: all_applied(s, workload), 300, "every event to be applied")
        wait_until(lambda: committed_all(s), 120, "offsets to be committed")
        counts = check_invariants(s, workload)
    finally:
        stop_worker(worker)
    print(f"SIGTERM during a database outage (exit {code}): {counts}")
