"""SIGTERM to a real worker mid-stream: it stops consuming, stores and commits the batch in
hand, flushes its producers and exits 0 within LEADSCORE_SHUTDOWN_TIMEOUT_S; the next
worker finds nothing lost and nothing to apply twice. And the probes an orchestrator asks:
/healthz and /readyz on the metrics server, bound where LEADSCORE_METRICS_HOST says."""

from __future__ import annotations

import dataclasses
import json
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest

from adapters.eventstore import SCORED_TOPIC, open_store
from adapters.settings import Settings
from devtools.engine_processes import stop_worker, wait_for_group
from devtools.workload import generate
from domain.lead import lead_aggregate_id
from streams.probes import EX_SHUTDOWN_TIMEOUT
from streams.producer import produce_events
from streams.relay import kafka_producer
from streams.wire import LEAD_EVENT_SCHEMA, AvroTopic, SchemaCatalog
from tests.support.net import free_port
from tests.support.worker import committed_all, committed_total, metric, start, wait_until

pytestmark = pytest.mark.e2e

EVENTS, LEADS, ORGS = 20_000, 2_000, 3
SHUTDOWN_TIMEOUT_S = 20.0


def probe(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def listening_on(port: int) -> str:
    """The IPv4 address a socket listens on at ``port`` (/proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            return ".".join(str(b) for b in reversed(bytes.fromhex(addr)))
    raise AssertionError(f"nothing listens on port {port}")


def lead_event_notes(s: Settings) -> int:
    """How many lead-events the store's log holds (scores aside): one per applied event."""
    store = open_store(s.pg_dsn, cache_size=0)
    try:
        notes: list[Any] = []
        while batch := store.notifications(notes[-1].id if notes else 0, 10_000):
            notes.extend(batch)
        return sum(1 for n in notes if n.topic != SCORED_TOPIC)
    finally:
        store.close()


def stopped_counts(log: str) -> dict[str, Any]:
    (line,) = [json.loads(x) for x in log.splitlines() if '"worker stopped"' in x]
    return line


def test_sigterm_mid_stream_commits_the_batch_in_hand_and_exits_0_in_time(
    settings: Settings, tmp_path: Path
) -> None:
    s = dataclasses.replace(
        settings,
        metrics_port=free_port(),
        metrics_host="0.0.0.0",
        batch_size=500,
        shutdown_timeout_s=SHUTDOWN_TIMEOUT_S,
        log_format="json",
    )
    workload = list(generate(ORGS, LEADS, EVENTS, seed=41))
    encoder = AvroTopic(SchemaCatalog.from_settings(s), s.topic_lead_events, LEAD_EVENT_SCHEMA)
    report = produce_events(kafka_producer(s.kafka), s.topic_lead_events, encoder, workload)
    assert report.sent == len(workload) and report.failed == 0
    pairs = {(lead_aggregate_id(e.org_id, e.lead_id), e.event_id) for e in workload}

    log = tmp_path / "worker.log"
    worker = start(s, log)
    second = None
    try:
        wait_for_group(s, worker, timeout=120)
        assert listening_on(s.metrics_port) == "0.0.0.0"
        assert probe(s.metrics_port, "/healthz")[0] == 200
        wait_until(lambda: probe(s.metrics_port, "/readyz")[0] == 200, 60, "readiness")
        status, ready = probe(s.metrics_port, "/readyz")
        assert ready["checks"]["consumer_assigned"] and ready["checks"]["store_reachable"]
        assert ready["partitions"] == s.topic_partitions

        received = lambda: metric(s.metrics_port, "leadscore_lead_events_total", "received")  # noqa: E731
        wait_until(lambda: received() >= 2_000, 120, "the worker to be mid-stream")
        assert received() < len(workload), "the worker finished before the signal: no mid-stream"

        worker.send_signal(signal.SIGTERM)
        sent_at = time.monotonic()
        code = worker.wait(SHUTDOWN_TIMEOUT_S + 10)
        took = time.monotonic() - sent_at
        text = log.read_text()
        assert code == 0, f"exit {code}\n{text[-3000:]}"
        assert took <= SHUTDOWN_TIMEOUT_S, f"took {took:.1f}s to stop"
        assert "worker stopped" in text, text[-3000:]

        # What the first worker stored is exactly what it committed: the second one,
        # starting from the committed offsets, meets no event it has applied.
        second_port = free_port()
        second = start(dataclasses.replace(s, metrics_port=second_port), tmp_path / "second.log")
        wait_for_group(s, second, timeout=120)
        store = open_store(s.pg_dsn, cache_size=0)
        try:
            wait_until(
                lambda: store.stored_event_ids(list(pairs)) == pairs, 180, "every event stored"
            )
        finally:
            store.close()
        wait_until(lambda: committed_all(s), 60, "offsets to be committed")
        second_counts = {
            o: metric(second_port, "leadscore_lead_events_total", o)
            for o in ("received", "applied", "duplicate")
        }
    finally:
        if second is not None:
            stop_worker(second)
        stop_worker(worker)

    # Nothing lost: every lead-event is stored; nothing twice: one note per lead-event.
    assert lead_event_notes(s) == len(workload)
    # The first worker committed all it applied: the second met none of it again.
    first = stopped_counts(text)
    assert first["applied"] > 0 and first["exit_code"] == 0, first
    assert second_counts["duplicate"] == 0, (first, second_counts)
    assert first["applied"] + second_counts["applied"] == len(workload), (first, second_counts)
    print(f"SIGTERM mid-stream: stopped in {took:.1f}s, first {first}, second {second_counts}")


def read_only(s: Settings, on: bool) -> None:
    base, name = s.pg_dsn.rsplit("/", 1)
    with psycopg.connect(f"{base}/leadscore", autocommit=True) as conn:
        value = "on" if on else "off"
        conn.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = {value}')
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (name,),
        )


def test_a_stop_that_cannot_store_its_batch_ends_in_time_without_committing_it(
    settings: Settings, tmp_path: Path
) -> None:
    """The database read-only: the batch in hand cannot be stored, so the worker exits 70
    within the shutdown time, its batch uncommitted (the next worker gets it again)."""
    timeout = 8.0
    s = dataclasses.replace(
        settings, metrics_port=free_port(), batch_size=500, shutdown_timeout_s=timeout
    )
    workload = list(generate(ORGS, 300, 2_000, seed=43))
    encoder = AvroTopic(SchemaCatalog.from_settings(s), s.topic_lead_events, LEAD_EVENT_SCHEMA)
    worker = start(s, tmp_path / "worker.log")
    try:
        wait_for_group(s, worker, timeout=120)
        wait_until(lambda: probe(s.metrics_port, "/readyz")[0] == 200, 60, "readiness")
        read_only(s, True)
        try:
            report = produce_events(kafka_producer(s.kafka), s.topic_lead_events, encoder, workload)
            assert report.sent == len(workload)
            retries = 'leadscore_batch_retries_total{error="DatabaseUnavailableError"}'
            wait_until(lambda: metric(s.metrics_port, retries) >= 1, 60, "a batch retried")
            before = committed_total(s)
            worker.send_signal(signal.SIGTERM)
            sent_at = time.monotonic()
            code = worker.wait(timeout + 10)
            took = time.monotonic() - sent_at
            assert code == EX_SHUTDOWN_TIMEOUT, code
            assert took <= timeout + 1.0, f"took {took:.1f}s"
            assert committed_total(s) == before == 0, "a batch not stored was committed"
        finally:
            read_only(s, False)
    finally:
        stop_worker(worker)
