"""The API's hot-read cache against the real projections: answers never outlive a change.

A real uvicorn API (the same as tests/integration/test_api.py) with its cache on; new
lead-events go through the real processor and projections, and the API must show them
as soon as the projections' change notices arrive, and stay right when a listener drops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import pytest
import redis as redis_sync

from adapters.settings import Settings
from domain.events import ActivityKind, EventType, LeadEvent
from projections import changes
from query_api import hotcache
from streams.bootstrap import bootstrap
from tests.support.api import ORG_A, SHARED, Api, live_api, wait_for
from tests.support.factories import T0, FixedScorer, activity, next_id
from tests.support.pipeline import encoded
from tests.support.readmodels import project

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def api(services: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with live_api(services, tmp_path_factory.mktemp("hot-cache")) as running:
        yield running


def apply(api: Api, *events: LeadEvent) -> None:
    """Through the real engine and the real PostgreSQL and Redis projections."""
    engine = bootstrap(api.settings, scorer=FixedScorer())
    try:
        stats = engine.processor.process(encoded(engine, list(events)))
        assert stats.applied == len(events), stats
    finally:
        engine.close()
    asyncio.run(project(api.settings))


def cache_lookups(api: Api, read: str, result: str) -> float:
    text = api.get("/metrics", org=None).raw.decode()
    prefix = f'leadscore_api_cache_lookups_total{{read="{read}",result="{result}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


def listening(api: Api) -> list[str]:
    return list(api.get("/health", org=None).body["read_cache"]["listening"])


def test_health_reports_the_cache_listening_to_both_read_models(api: Api) -> None:
    cache = api.get("/health", org=None).body["read_cache"]
    assert cache["enabled"] is True
    assert cache["listening"] == ["postgres", "redis"]


def test_a_repeated_read_is_served_from_the_cache(api: Api) -> None:
    first = api.get(f"/leads/{SHARED}")
    hits = cache_lookups(api, "lead", "hit")
    second = api.get(f"/leads/{SHARED}")
    assert first.status == second.status == 200
    assert second.raw == first.raw
    assert cache_lookups(api, "lead", "hit") == hits + 1


def test_a_new_score_evicts_the_cached_lead_and_leaderboard(api: Api) -> None:
    before = api.get(f"/leads/{SHARED}").body["score"]
    board = api.get("/leaderboard", limit=100).body["items"]
    assert api.get(f"/leads/{SHARED}").body["score"] == before  # now cached
    # Two demo requests raise the FixedScorer's probability by 0.4.
    apply(
        api,
        activity(ActivityKind.DEMO_REQUEST, lead=SHARED, org=ORG_A),
        activity(ActivityKind.DEMO_REQUEST, lead=SHARED, org=ORG_A),
    )

    def fresh() -> bool:
        score = api.get(f"/leads/{SHARED}").body["score"]
        return bool(score["position"] > before["position"] and score["score"] > before["score"])

    wait_for(fresh, "the new score through the cache", timeout=2.0)
    now = api.get(f"/leads/{SHARED}").body["score"]["score"]

    def ranked() -> bool:
        items = api.get("/leaderboard", limit=100).body["items"]
        return any(i["lead_id"] == SHARED and i["score"] == now for i in items)

    assert any(i["lead_id"] == SHARED for i in board)
    wait_for(ranked, "the new score on the cached leaderboard", timeout=2.0)


def test_a_profile_change_evicts_through_the_postgres_notice(api: Api) -> None:
    lead = next(lid for (org, lid) in api.expected["leads"] if org == ORG_A and lid != SHARED)
    assert api.get(f"/leads/{lead}").body["title"] != "Chief Revenue Officer"
    api.get(f"/leads/{lead}")  # cached
    update = LeadEvent(
        next_id(), EventType.LEAD_UPDATED, ORG_A, lead, T0, {"title": "Chief Revenue Officer"}
    )
    apply(api, update)
    wait_for(
        lambda: api.get(f"/leads/{lead}").body["title"] == "Chief Revenue Officer",
        "the updated title through the cache",
        timeout=2.0,
    )


def test_losing_the_redis_listener_flushes_the_cache(api: Api) -> None:
    """Notices sent while the listener is away are lost: it must not serve what it held."""
    key = f"{api.settings.redis_prefix}:{ORG_A}:lead:{SHARED}"
    r = redis_sync.Redis.from_url(api.settings.redis_url, decode_responses=True)
    saved = r.hgetall(key)
    try:
        cached = api.get(f"/leads/{SHARED}").body["score"]["score"]
        assert api.get(f"/leads/{SHARED}").body["score"]["score"] == cached
        # A write whose notice the API never hears (as if sent during an outage) ...
        r.hset(key, mapping={"score": "1.5", "position": str(int(saved["position"]) + 1)})
        assert api.get(f"/leads/{SHARED}").body["score"]["score"] == cached  # still cached
        # ... then the listener's connection drops.
        assert r.client_kill_filter(_type="pubsub") >= 1
        wait_for(
            lambda: api.get(f"/leads/{SHARED}").body["score"]["score"] == 1.5,
            "a fresh read after the listener reconnected",
            timeout=10.0,
        )
        wait_for(lambda: listening(api) == ["postgres", "redis"], "the listener back", 10.0)
    finally:
        r.hset(key, mapping=saved)
        r.publish(changes.redis_channel(api.settings.redis_prefix), changes.FLUSH)
        r.close()


def test_losing_the_postgres_listener_flushes_the_cache(api: Api) -> None:
    lead = next(lid for (org, lid) in api.expected["leads"] if org == ORG_A and lid != SHARED)
    title = api.get(f"/leads/{lead}").body["title"]
    assert api.get(f"/leads/{lead}").body["title"] == title  # cached

    async def behind_the_back_then_drop_the_listener() -> int:
        conn = await asyncpg.connect(api.settings.pg_dsn)
        try:
            # A change whose notice the API never hears ...
            await conn.execute(
                "UPDATE leads SET title = 'Head of Growth' WHERE org_id = $1 AND lead_id = $2",
                ORG_A,
                lead,
            )
        finally:
            await conn.close()
        # ... then its listening connection drops: the API's role may end its own sessions.
        api_conn = await asyncpg.connect(api.settings.api_dsn)
        try:
            rows = await api_conn.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = $1",
                hotcache.APPLICATION_NAME,
            )
            return len(rows)
        finally:
            await api_conn.close()

    try:
        assert api.get(f"/leads/{lead}").body["title"] == title
        assert asyncio.run(behind_the_back_then_drop_the_listener()) == 1
        wait_for(
            lambda: api.get(f"/leads/{lead}").body["title"] == "Head of Growth",
            "a fresh read after the listener reconnected",
            timeout=10.0,
        )
        wait_for(lambda: listening(api) == ["postgres", "redis"], "the listener back", 10.0)
    finally:
        asyncio.run(_restore_title(api.settings, lead, title))


async def _restore_title(settings: Settings, lead: str, title: str) -> None:
    conn = await asyncpg.connect(settings.pg_dsn)
    try:
        await conn.execute(
            "UPDATE leads SET title = $3 WHERE org_id = $1 AND lead_id = $2", ORG_A, lead, title
        )
        await conn.execute("SELECT pg_notify($1, $2)", changes.PG_CHANNEL, changes.FLUSH)
    finally:
        await conn.close()
