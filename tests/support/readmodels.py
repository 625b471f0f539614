"""The read models: what they must hold (from the event store), what they hold, and
projecting the PostgreSQL and Redis read models up to the store's head."""

from __future__ import annotations

from typing import Any

import asyncpg
import redis.asyncio as aioredis

from adapters.eventstore import SCORED_TOPIC, open_store
from adapters.settings import Settings
from projections.base import ProjectionRunner
from projections.postgres import PROFILE_COLUMNS, PostgresProjection
from projections.redis import RedisProjection


def expected_state(settings: Settings) -> dict[str, Any]:
    """What the read models must hold, computed from the aggregates themselves."""
    store = open_store(settings.pg_dsn, cache_size=0)
    try:
        notes = []
        while batch := store.notifications(notes[-1].id if notes else 0, 5000):
            notes.extend(batch)
        ids = {n.originator_id for n in notes}
        leads = [lead for lead in store.load(ids).values() if lead is not None]
        n_scores = len([n for n in notes if n.topic == SCORED_TOPIC])
    finally:
        store.close()
    return {
        "leads": sorted(
            (
                lead.org_id,
                lead.lead_id,
                tuple(lead.profile.get(c) for c in PROFILE_COLUMNS),
                {"converted": "converted", "disqualified": "disqualified"}.get(
                    lead.outcome or "", "open"
                ),
            )
            for lead in leads
        ),
        "scores": sorted(
            (lead.org_id, lead.lead_id, lead.score, lead.grade, lead.model_version)
            for lead in leads
            if lead.score is not None
        ),
        "n_scores": n_scores,
        "head": notes[-1].id,
    }


async def pg_state(pool: asyncpg.Pool) -> dict[str, Any]:
    leads = await pool.fetch(
        f"SELECT org_id, lead_id, {', '.join(PROFILE_COLUMNS)}, status FROM leads"
    )
    scores = await pool.fetch(
        "SELECT org_id, lead_id, total, grade, model_version FROM lead_scores"
    )
    n_history = await pool.fetchval("SELECT count(*) FROM score_history")
    return {
        "leads": sorted(
            (r["org_id"], r["lead_id"], tuple(r[c] for c in PROFILE_COLUMNS), r["status"])
            for r in leads
        ),
        "scores": sorted(tuple(r) for r in scores),
        "n_scores": n_history,
    }


async def redis_state(client: aioredis.Redis, prefix: str, orgs: set[str]) -> list[tuple[Any, ...]]:
    out = []
    for org in sorted(orgs):
        board = await client.zrange(f"{prefix}:{org}:leaderboard", 0, -1, withscores=True)
        for lead, score in board:
            h = await client.hgetall(f"{prefix}:{org}:lead:{lead.decode()}")
            out.append((org, lead.decode(), score, float(h[b"score"]), h[b"grade"].decode()))
    return sorted(out)


def expected_redis(expected: dict[str, Any]) -> list[tuple[Any, ...]]:
    return sorted(
        (org, lead, score, score, grade) for org, lead, score, grade, _m in expected["scores"]
    )


async def projected_position(s: Settings) -> int:
    pool = await asyncpg.create_pool(s.pg_dsn, min_size=1, max_size=2)
    client = aioredis.from_url(s.redis_url)
    try:
        positions = [
            await PostgresProjection(pool).position(),
            await RedisProjection(client, s.redis_prefix).position(),
        ]
        return min(positions)
    finally:
        await client.aclose()
        await pool.close()


async def read_models(s: Settings) -> tuple[object, object]:
    pool = await asyncpg.create_pool(s.pg_dsn, min_size=1, max_size=2)
    client = aioredis.from_url(s.redis_url)
    try:
        pg = await pg_state(pool)
        orgs = {lead[0] for lead in pg["leads"]}
        return pg, await redis_state(client, s.redis_prefix, orgs)
    finally:
        await client.aclose()
        await pool.close()


def read_models_expected(want: dict) -> tuple[object, object]:  # type: ignore[type-arg]
    return {k: want[k] for k in ("leads", "scores", "n_scores")}, expected_redis(want)


async def project(settings: Settings) -> None:
    pool = await asyncpg.create_pool(settings.pg_dsn, min_size=1, max_size=4)
    client = aioredis.from_url(settings.redis_url)
    try:
        runner = ProjectionRunner(pool, [])
        for projection in (
            PostgresProjection(pool),
            RedisProjection(client, settings.redis_prefix),
        ):
            await projection.setup()
            await runner.catch_up(projection)
    finally:
        await client.aclose()
        await pool.close()
