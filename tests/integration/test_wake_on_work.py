"""Followers of the log sleep at its head and wake when the store stores events (its
NOTIFY), instead of reading on a short timer (adapters/positions.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Iterator

import asyncpg
import pytest

from adapters import positions
from adapters.eventstore import open_store
from adapters.positions import LogWaiter
from adapters.settings import Settings
from adapters.webhook_secrets import SecretBox
from projections.base import ProjectionRunner
from projections.postgres import PostgresProjection
from streams.bootstrap import Engine, bootstrap
from streams.webhook_dispatcher import DispatchConfig, WebhookDispatcher
from tests.support.factories import FixedScorer, created
from tests.support.pipeline import consume_all, process_all

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    e = bootstrap(settings, scorer=FixedScorer())
    process_all(e, [created(lead="first")])  # the store's tables exist before anyone listens
    yield e
    e.close()


def store_later(engine: Engine, lead: str, delay: float) -> threading.Thread:
    thread = threading.Timer(delay, process_all, (engine, [created(lead=lead)]))
    thread.start()
    return thread


def test_a_waiter_sleeps_without_work_and_wakes_when_events_are_stored(
    engine: Engine, settings: Settings
) -> None:
    stop = threading.Event()
    waiter = LogWaiter(settings.pg_dsn)
    try:
        waiter.listen()
        started = time.monotonic()
        assert waiter.wait(stop, timeout=0.6) is False  # nothing stored: the whole timeout
        assert time.monotonic() - started >= 0.55

        timer = store_later(engine, "second", 0.3)
        started = time.monotonic()
        assert waiter.wait(stop, timeout=5.0) is True
        woke_after = time.monotonic() - started
        timer.join()
        assert 0.25 < woke_after < 2.0  # the commit woke it, not the 5 s timeout

        # Stored while nobody waited: queued, so the next wait returns at once.
        process_all(engine, [created(lead="third")])
        started = time.monotonic()
        assert waiter.wait(stop, timeout=5.0) is True
        assert time.monotonic() - started < 0.5

        stop.set()
        assert waiter.wait(stop, timeout=5.0) is False  # a stop ends the wait
    finally:
        waiter.close()


def test_a_waiter_that_lost_its_connection_says_maybe_and_listens_again(
    engine: Engine, settings: Settings
) -> None:
    stop = threading.Event()
    waiter = LogWaiter(settings.pg_dsn)
    try:
        waiter.listen()
        waiter.close()  # as when PostgreSQL restarts
        assert waiter.wait(stop, timeout=0.5) is True  # may have missed notices: read
        timer = store_later(engine, "after-reconnect", 0.2)
        assert waiter.wait(stop, timeout=5.0) is True
        timer.join()
    finally:
        waiter.close()


async def test_an_async_listener_is_set_by_a_store_and_can_be_removed(
    engine: Engine, settings: Settings
) -> None:
    conn = await asyncpg.connect(settings.pg_dsn)
    try:
        stored = asyncio.Event()
        listener = await positions.alisten(conn, stored)
        await asyncio.to_thread(process_all, engine, [created(lead="async")])
        await asyncio.wait_for(stored.wait(), 5.0)

        await positions.aunlisten(conn, listener)
        stored.clear()
        await asyncio.to_thread(process_all, engine, [created(lead="unheard")])
        await asyncio.sleep(0.5)
        assert not stored.is_set()
    finally:
        await conn.close()


def test_the_relay_publishes_a_new_score_on_the_stores_notice(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the idle read pushed to 30 s, only the store's notice can wake the relay."""
    monkeypatch.setattr(positions, "IDLE_READ_S", 30.0)
    stop = threading.Event()
    with engine.relay() as relay:
        thread = threading.Thread(target=relay.run, args=(stop,), daemon=True)
        thread.start()
        try:
            first = consume_all(settings, expected=1, timeout=30)  # "first", from the fixture
            assert len(first) == 1
            time.sleep(0.5)  # asleep at the head now
            process_all(engine, [created(lead="prompt")])
            assert len(consume_all(settings, expected=2, timeout=10)) == 2
        finally:
            stop.set()
            thread.join(10)
    assert not thread.is_alive()


async def test_a_projection_at_the_head_wakes_on_the_stores_notice(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(positions, "IDLE_READ_S", 30.0)
    pool = await asyncpg.create_pool(settings.pg_dsn, min_size=1, max_size=4)
    projection = PostgresProjection(pool)
    runner = ProjectionRunner(pool, [projection])
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:

        async def projected(lead: str) -> bool:
            try:
                n = await pool.fetchval("SELECT count(*) FROM leads WHERE lead_id = $1", lead)
            except asyncpg.UndefinedTableError:  # the runner has not set the table up yet
                return False
            return bool(n)

        deadline = time.monotonic() + 30
        while not await projected("first") and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert await projected("first")
        await asyncio.sleep(0.5)  # asleep at the head now
        await asyncio.to_thread(process_all, engine, [created(lead="woken")])
        deadline = time.monotonic() + 10
        while not await projected("woken") and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert await projected("woken")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await pool.close()


class CountedReads(WebhookDispatcher):
    """The webhook dispatcher, noting when a read of the log brought stored scores."""

    reads: list[float]

    def enqueue_once(self) -> int:
        n = super().enqueue_once()
        if n:
            self.reads.append(time.monotonic())
        return n


def test_the_webhook_dispatcher_reads_a_busy_log_at_most_once_per_linger(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first score after a quiet spell is read at once; scores stored within the
    linger after it wait for one read a linger later (no webhook is needed: it reads the
    log either way)."""
    monkeypatch.setattr(positions, "IDLE_READ_S", 30.0)
    settings = dataclasses.replace(settings, webhooks_allow_http=True)
    box = SecretBox.from_settings(settings)
    config = DispatchConfig(linger_s=2.0)
    store = open_store(settings.pg_dsn, cache_size=0)
    stop = threading.Event()
    try:
        with CountedReads(store, settings.pg_dsn, box, config) as dispatcher:
            dispatcher.reads = []
            thread = threading.Thread(target=dispatcher.run, args=(stop,), daemon=True)
            thread.start()
            deadline = time.monotonic() + 30
            while not dispatcher.reads and time.monotonic() < deadline:  # "first"
                time.sleep(0.02)
            time.sleep(0.5)  # asleep at the head now
            process_all(engine, [created(lead="after-quiet")])
            stored = time.monotonic()
            while len(dispatcher.reads) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert dispatcher.reads[1] - stored < config.linger_s  # at once
            for lead in ("busy-1", "busy-2", "busy-3"):
                process_all(engine, [created(lead=lead)])
            time.sleep(config.linger_s + 1.0)
            stop.set()
            thread.join(10)
    finally:
        stop.set()
        store.close()
    assert len(dispatcher.reads) == 3, dispatcher.reads  # the three stores: one read
    assert dispatcher.reads[2] - dispatcher.reads[1] >= config.linger_s - 0.05
