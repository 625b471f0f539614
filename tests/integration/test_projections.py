"""PostgreSQL and Redis read models converge to the event store's state, however fed."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from adapters.settings import Settings
from devtools.workload import generate
from projections.base import ProjectionRunner
from projections.log import LogEntry, LogReader
from projections.postgres import PostgresProjection
from projections.redis import RedisProjection
from streams.bootstrap import bootstrap
from tests.support.factories import FixedScorer
from tests.support.pipeline import process_all, store_history
from tests.support.readmodels import expected_redis, expected_state, pg_state, redis_state

pytestmark = pytest.mark.integration


@pytest.fixture
async def history(settings: Settings) -> dict[str, Any]:
    """A real history in the event store: two orgs, their leads, scores and outcomes."""
    store_history(settings, list(generate(2, 60, 900, seed=21)), FixedScorer(), batch=200)
    return expected_state(settings)


@pytest.fixture
async def stores(settings: Settings) -> AsyncIterator[tuple[asyncpg.Pool, aioredis.Redis, str]]:
    pool = await asyncpg.create_pool(settings.pg_dsn, min_size=1, max_size=4)
    client = aioredis.from_url(settings.redis_url)
    prefix = f"leadscore-test-{secrets.token_hex(4)}"
    yield pool, client, prefix
    await RedisProjection(client, prefix).reset()
    await client.aclose()
    await pool.close()


async def test_projections_equal_the_event_store_after_processing_and_after_rebuild(
    history: dict[str, Any], stores: tuple[asyncpg.Pool, aioredis.Redis, str]
) -> None:
    pool, client, prefix = stores
    pg, rd = PostgresProjection(pool), RedisProjection(client, prefix)
    runner = ProjectionRunner(pool, [pg, rd], batch_size=250)
    for p in (pg, rd):
        await p.setup()
        assert await runner.catch_up(p) > 0
        assert await p.position() == history["head"]
    orgs = {lead[0] for lead in history["leads"]}
    want = {k: history[k] for k in ("leads", "scores", "n_scores")}
    assert await pg_state(pool) == want
    assert await redis_state(client, prefix, orgs) == expected_redis(history)
    recent = await client.lrange(f"{prefix}:{sorted(orgs)[0]}:recent", 0, -1)
    assert 0 < len(recent) <= 100

    for p in (pg, rd):
        await runner.rebuild(p)
    assert await pg_state(pool) == want
    assert await redis_state(client, prefix, orgs) == expected_redis(history)


async def test_restart_in_the_middle_with_redelivery_converges(
    history: dict[str, Any], stores: tuple[asyncpg.Pool, aioredis.Redis, str]
) -> None:
    pool, client, prefix = stores
    pg, rd = PostgresProjection(pool), RedisProjection(client, prefix)
    reader = LogReader(pool)
    entries = await reader.read(0, 100_000)
    half = len(entries) // 2
    for p in (pg, rd):
        await p.setup()
        await p.project(entries[:half])
        # The "crash": the same entries arrive again, then an overlapping batch.
        await p.project(entries[:half])
        await p.project(entries[half // 2 :])
        await p.project(entries[half // 2 :])
        assert await p.position() == history["head"]
    orgs = {lead[0] for lead in history["leads"]}
    assert await pg_state(pool) == {k: history[k] for k in ("leads", "scores", "n_scores")}
    assert await redis_state(client, prefix, orgs) == expected_redis(history)
    recent = await client.lrange(f"{prefix}:{sorted(orgs)[0]}:recent", 0, -1)
    positions = [int(x.split(b'"position":')[1].rstrip(b"}")) for x in recent]
    assert len(positions) == len(set(positions))  # no change listed twice


async def test_reapplying_a_batch_with_a_lead_many_times_changes_nothing(
    history: dict[str, Any], stores: tuple[asyncpg.Pool, aioredis.Redis, str]
) -> None:
    """Each table's batch is one statement (unnest of column arrays), which may not touch
    a row twice: a batch where each lead is scored and changed many times is folded to
    one row per lead first, on both paths (``project`` and the quarantine's ``reapply``)."""
    pool, _client, _prefix = stores
    pg = PostgresProjection(pool)
    await pg.setup()
    entries = await LogReader(pool).read(0, 100_000)
    scored = [e.aggregate_id for e in entries if e.kind == "LeadScored"]
    assert len(scored) > len(set(scored))  # leads scored more than once in one batch
    await pg.project(entries)
    want = {k: history[k] for k in ("leads", "scores", "n_scores")}
    assert await pg_state(pool) == want
    await pg.reapply(entries[len(entries) // 3 :])
    assert await pg_state(pool) == want
    # Reapplied onto empty score tables, every score row is written by the statement.
    await pool.execute("DELETE FROM lead_scores; DELETE FROM score_history")
    await pg.reapply(entries)
    assert await pg_state(pool) == want


class CountedWrites(PostgresProjection):
    """The PostgreSQL read model, counting its writes (the entries of each, and when)."""

    linger_s = 3.0

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self.writes: list[int] = []
        self.times: list[float] = []

    async def project(self, entries: Sequence[LogEntry]) -> None:
        self.writes.append(len(entries))
        self.times.append(time.monotonic())
        await super().project(entries)


async def test_a_follower_at_the_head_reads_at_most_once_per_linger(
    history: dict[str, Any], settings: Settings, stores: tuple[asyncpg.Pool, aioredis.Redis, str]
) -> None:
    pool, _client, _prefix = stores
    projection = CountedWrites(pool)
    runner = ProjectionRunner(pool, [projection], batch_size=100_000)
    await projection.setup()
    engine = bootstrap(settings, scorer=FixedScorer())
    reader = LogReader(pool)
    stop = asyncio.Event()
    follower = asyncio.create_task(runner.follow(projection, stop))

    async def caught_up(head: int) -> None:
        async with asyncio.timeout(30):
            while await projection.position() < head:
                await asyncio.sleep(0.02)

    try:
        await caught_up(history["head"])
        assert projection.writes == [history["head"]]  # the whole history, one read
        # After a quiet spell, one transaction is read at once, not a linger later...
        await asyncio.sleep(1.5)
        await asyncio.to_thread(process_all, engine, list(generate(2, 5, 20, seed=23)), 20)
        stored = time.monotonic()
        one = await reader.head()
        await caught_up(one)
        assert time.monotonic() - stored < projection.linger_s
        assert projection.writes == [history["head"], one - history["head"]]
        # ...then five transactions within the linger are one write, a linger after it.
        await asyncio.to_thread(process_all, engine, list(generate(2, 20, 100, seed=22)), 20)
        five = await reader.head()
        await caught_up(five)
        assert projection.writes == [history["head"], one - history["head"], five - one]
        assert projection.times[2] - projection.times[1] >= projection.linger_s - 0.05
    finally:
        stop.set()
        await follower
        engine.close()
