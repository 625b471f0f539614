"""Background work restarts after real failures and catches up (streams/supervise.py).

The relay loses its tracking table mid-stream; the projections cannot open their pool
while the database refuses connections; the decay timer is elected once per group; and
the worker's /health and gauge say which tasks run.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import psycopg
import pytest
from prometheus_client import REGISTRY

from adapters.eventstore import SCORED_TOPIC, open_store
from adapters.positions import SessionLock
from adapters.settings import Settings
from domain.transitions import SCORE_UPDATED
from streams.bootstrap import bootstrap
from streams.codec import event_to_record
from streams.decay import decay_lock_name
from streams.dlq import RawMessage
from streams.supervise import Supervisor, health, serve_metrics, supervise
from streams.wire import LEAD_EVENT_SCHEMA, AvroTopic, SchemaCatalog
from streams.worker import projections_work, relay_work
from tests.support.factories import FixedScorer, created
from tests.support.net import free_port
from tests.support.pipeline import consume_all

pytestmark = pytest.mark.integration


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def alive(task: str) -> float | None:
    return REGISTRY.get_sample_value("leadscore_background_alive", {"task": task})


def messages(settings: Settings, tag: str, n: int) -> list[RawMessage]:
    enc = AvroTopic(
        SchemaCatalog.from_settings(settings), settings.topic_lead_events, LEAD_EVENT_SCHEMA
    )
    return [
        RawMessage(enc.encode(event_to_record(created(lead=f"{tag}-{i}"))), offset=i)
        for i in range(n)
    ]


def stored_score_ids(settings: Settings) -> set[str]:
    from domain.lead import score_event_id

    store = open_store(settings.pg_dsn, cache_size=0)
    try:
        return {
            str(score_event_id(n.originator_id, n.originator_version))
            for n in store.all_notifications([SCORED_TOPIC])
        }
    finally:
        store.close()


def published_score_ids(settings: Settings, expected: int) -> set[str]:
    catalog = SchemaCatalog.from_settings(settings)
    records = [catalog.decode(v) for _k, v in consume_all(settings, expected=expected)]
    return {r["event_id"] for r in records if r["event_type"] == SCORE_UPDATED}


def test_the_relay_restarts_after_its_table_is_dropped_and_catches_up(
    settings: Settings,
) -> None:
    engine = bootstrap(settings, scorer=FixedScorer())
    stop = threading.Event()
    relay = supervise("relay", relay_work(engine), stop, base=0.2)
    try:
        engine.processor.process(messages(settings, "before", 5))
        first = stored_score_ids(settings)
        assert len(first) == 5
        wait_for(lambda: published_score_ids(settings, 5) >= first, 30, "the first scores")
        with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
            conn.execute("DROP TABLE tracking")  # the relay's position: its next write fails
        engine.processor.process(messages(settings, "after", 5))
        wait_for(lambda: relay.state.restarts >= 1, 30, "the relay to restart")
        assert relay.state.last_error == "UndefinedTable"
        every = stored_score_ids(settings)
        assert len(every) == 10
        # Restarted from position 0 (its table is new): at least once, nothing lost.
        wait_for(lambda: published_score_ids(settings, 15) >= every, 30, "the relay to catch up")
        wait_for(lambda: alive("relay") == 1.0, 10, "the relay gauge")
    finally:
        stop.set()
        relay.join(15)
        engine.close()
    assert alive("relay") == 0.0


def test_the_projections_restart_until_the_database_takes_connections(
    settings: Settings,
) -> None:
    engine = bootstrap(settings, scorer=FixedScorer())
    base, name = settings.pg_dsn.rsplit("/", 1)
    # Connections to a database are barred from another one.
    admin = psycopg.connect(f"{base}/leadscore", autocommit=True)
    reader = psycopg.connect(settings.pg_dsn, autocommit=True)
    stop = threading.Event()
    projections: Supervisor | None = None
    try:
        engine.processor.process(messages(settings, "p", 5))
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        projections = supervise(
            "projections", projections_work(settings, ["postgres"]), stop, base=0.2
        )
        wait_for(lambda: projections.state.restarts >= 2, 30, "the projections to retry")
        assert projections.state.last_error == "ObjectNotInPrerequisiteStateError"
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')

        def projected() -> int:
            try:
                row = reader.execute("SELECT count(*) FROM lead_scores").fetchone()
            except psycopg.errors.UndefinedTable:
                return 0
            return int(row[0]) if row else 0

        wait_for(lambda: projected() == 5, 30, "the projection to catch up")
        assert projections.state.alive and alive("projections") == 1.0
    finally:
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        stop.set()
        if projections is not None:
            projections.join(15)
        admin.close()
        reader.close()
        engine.close()


def test_one_decay_timer_per_consumer_group(settings: Settings) -> None:
    first = SessionLock(settings.pg_dsn, decay_lock_name(settings.consumer_group))
    second = SessionLock(settings.pg_dsn, decay_lock_name(settings.consumer_group))
    other = SessionLock(settings.pg_dsn, decay_lock_name(settings.consumer_group + "-b"))
    try:
        assert first.held() and first.held()
        assert not second.held()
        assert other.held()  # another group elects its own
        first.close()  # that worker stopped: its session, and the lock, are gone
        wait_for(second.held, 10, "the second worker to be elected")
        assert not first.held()
    finally:
        for lock in (first, second, other):
            lock.close()


def test_health_reports_each_task_and_a_failing_one_makes_it_not_ready() -> None:
    stop = threading.Event()
    calls: list[int] = []

    def broken(_stop: threading.Event) -> None:
        calls.append(1)
        raise OSError("the sink's connection is closed")

    tasks = [
        supervise("steady", lambda s: s.wait(), stop),
        supervise("broken", broken, stop, base=0.1, cap=0.4),
    ]
    port = free_port()
    server = serve_metrics(port, lambda: health(tasks, {"role": "test"}))
    try:
        wait_for(lambda: len(calls) >= 3, 10, "the broken task to be retried")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
        assert info.value.code == 503
        body = json.loads(info.value.read())
        info.value.close()
        assert body["live"] is True and body["ready"] is False and body["role"] == "test"
        assert body["tasks"]["steady"] == {"alive": True, "restarts": 0, "last_error": None}
        assert body["tasks"]["broken"]["restarts"] >= 2
        assert body["tasks"]["broken"]["last_error"] == "OSError"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/live", timeout=5) as r:
            assert r.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        assert 'leadscore_background_alive{task="steady"} 1.0' in text
        assert 'leadscore_background_restarts_total{task="broken"}' in text
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        for task in tasks:
            task.join(5)


def test_of_two_workers_only_the_elected_one_runs_decay_ticks(settings: Settings) -> None:
    from datetime import timedelta

    from streams.decay import DecayTimer, run_decay

    engine = bootstrap(settings, scorer=FixedScorer())
    ticks: list[str] = []
    stops = {"a": threading.Event(), "b": threading.Event()}

    def loop(name: str) -> threading.Thread:
        timer = DecayTimer(engine.processor, settings.pg_dsn, after=timedelta(0), batch=10)
        lock = SessionLock(settings.pg_dsn, decay_lock_name(settings.consumer_group))

        def run(tick: Callable[[], int]) -> int:
            ticks.append(name)
            return tick()

        thread = threading.Thread(
            target=run_decay, args=(timer, lock, 0.1, run, stops[name]), daemon=True
        )
        thread.start()
        return thread

    try:
        a = loop("a")
        wait_for(lambda: len(ticks) >= 5, 10, "decay ticks")
        b = loop("b")
        time.sleep(1.0)
        assert set(ticks) == {"a"}, "two workers of one group both ran the decay timer"
        stops["a"].set()  # worker a stops: its session and its lock go
        a.join(5)
        wait_for(lambda: "b" in ticks, 10, "worker b to take the decay timer over")
    finally:
        for stop in stops.values():
            stop.set()
        b.join(5)
        engine.close()
