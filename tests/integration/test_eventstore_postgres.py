from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest

from adapters.eventstore import (
    EVENTS_TABLE,
    SCORED_TOPIC,
    ColumnArrayRecorder,
    ConcurrentWriteError,
    LeadStore,
    LockTiming,
    open_store,
    postgres_env,
)
from adapters.settings import Settings
from domain.lead import Lead, lead_aggregate_id
from domain.processing import apply_batch, event_time
from tests.support.factories import T0, FixedScorer, activity, created
from tests.support.store_contract import LeadStoreContract

pytestmark = pytest.mark.integration


class TestPostgresLeadStore(LeadStoreContract):
    @pytest.fixture
    def store(self, settings: Settings) -> Iterator[LeadStore]:
        s = open_store(settings.pg_dsn, cache_size=100)
        yield s
        s.close()


def test_a_lead_event_cannot_be_stored_twice_for_a_lead(settings: Settings) -> None:
    """The unique index on (lead, source_event_id): a writer that applied a lead-event the
    lead had forgotten (skipping the store's answer) is refused, as a conflicting write."""
    store = open_store(settings.pg_dsn, cache_size=100)
    try:
        events = [created(lead="u")] + [
            activity(lead="u", at=T0 + timedelta(minutes=m))
            for m in range(Lead.RECENT_EVENT_IDS + 2)
        ]
        out = apply_batch(events, {}, FixedScorer(), event_time, T0)
        store.save_leads(list(out.touched.values()))
        agg = lead_aggregate_id("org-1", "u")
        lead = store.load([agg])[agg]
        assert lead is not None and lead.handle(events[1]) is True  # forgotten: applies
        with pytest.raises(ConcurrentWriteError):
            store.save_leads([lead])
        assert sum(1 for n in store.all_notifications() if n.topic != SCORED_TOPIC) == len(events)
    finally:
        store.close()


def test_a_table_from_before_the_column_gets_it_filled_from_the_stored_states(
    settings: Settings,
) -> None:
    # The library's own recorder makes and fills the table as before this column existed.
    env = postgres_env(settings.pg_dsn, cache_size=0)
    del env["APPLICATION_RECORDER_TOPIC"]
    old = LeadStore(env=env)
    events = [created(lead="m"), activity(lead="m"), activity(lead="m")]
    out = apply_batch(events, {}, FixedScorer(), event_time, T0)
    old.save_leads(list(out.touched.values()))
    old.close()
    with psycopg.connect(settings.pg_dsn) as conn:
        columns = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'leads_events'"
        ).fetchall()
    assert {"state", "topic"} <= {c for (c,) in columns}
    assert "source_event_id" not in {c for (c,) in columns}

    store = open_store(settings.pg_dsn, cache_size=0)
    try:
        agg = lead_aggregate_id("org-1", "m")
        pairs = {(agg, e.event_id) for e in events}
        assert store.stored_event_ids([*pairs, (agg, "other")]) == pairs
    finally:
        store.close()


def test_each_save_reports_its_wait_for_and_hold_of_the_write_lock(settings: Settings) -> None:
    """A save waits while another transaction holds the event store's write lock, and reports
    the wait (PostgreSQL's clock) and its own hold; a save with no rival waits ~0."""
    store = open_store(settings.pg_dsn, cache_size=100)
    seen: list[LockTiming] = []
    assert isinstance(store.recorder, ColumnArrayRecorder)
    store.recorder.lock_observer = seen.append
    try:
        first = apply_batch([created(lead="a")], {}, FixedScorer(), event_time, T0)
        store.save_leads(list(first.touched.values()))
        assert len(seen) == 1 and seen[0].events == 2  # LeadCreated + LeadScored
        assert 0 <= seen[0].waited_s < 0.1 and seen[0].held_s > 0

        rival = psycopg.connect(settings.pg_dsn)
        # Another writer mid-save: holds the store's write lock, uncommitted.
        rival.execute(store.recorder.store_lock_statement, store.recorder.store_lock_key)
        release = threading.Timer(0.3, rival.commit)
        release.start()
        try:
            second = apply_batch([created(lead="b")], {}, FixedScorer(), event_time, T0)
            store.save_leads(list(second.touched.values()))
        finally:
            release.join()
            rival.close()
        assert len(seen) == 2
        assert 0.25 <= seen[1].waited_s < 5, seen[1]
        assert seen[1].held_s < seen[1].waited_s  # the wait is not counted as a hold
    finally:
        store.close()


def test_a_save_does_not_wait_for_a_vacuum_of_the_events_table(settings: Settings) -> None:
    """Writers serialise on an advisory lock, not on LOCK TABLE: a transaction holding the
    lock a VACUUM or ANALYZE takes (SHARE UPDATE EXCLUSIVE) does not hold a save back, as
    the library's EXCLUSIVE table lock did until autovacuum cancelled itself."""
    store = open_store(settings.pg_dsn, cache_size=100)
    seen: list[LockTiming] = []
    assert isinstance(store.recorder, ColumnArrayRecorder)
    store.recorder.lock_observer = seen.append
    vacuum_like = psycopg.connect(settings.pg_dsn)
    try:
        vacuum_like.execute(f"LOCK TABLE {EVENTS_TABLE} IN SHARE UPDATE EXCLUSIVE MODE")
        batch = apply_batch([created(lead="v")], {}, FixedScorer(), event_time, T0)
        done = threading.Event()
        saver = threading.Thread(
            target=lambda: (store.save_leads(list(batch.touched.values())), done.set())
        )
        saver.start()
        assert done.wait(5), "the save waited for the vacuum's lock"
        saver.join()
        assert len(seen) == 1 and seen[0].waited_s < 0.1
    finally:
        vacuum_like.rollback()
        vacuum_like.close()
        store.close()
