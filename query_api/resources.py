"""What the API holds open for its lifetime: pools, clients, and (with chDB) a projection.

With the embedded ClickHouse default (``chdb://``) only one process may open the data
directory, so the API process itself follows the log into ClickHouse and answers
analytics from the same client. With a ClickHouse server the worker runs that projection
and the API only reads.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg
import redis.asyncio as aioredis
import structlog

from adapters.settings import Settings
from projections.analytics import Analytics
from projections.clickhouse import ClickHouseProjection
from projections.runner import embedded_clickhouse
from query_api import db_role
from query_api.clickhouse import AnalyticsCache, ClickHouse
from query_api.hotcache import ReadCache, following
from query_api.projection_task import ProjectionTask, start_projection
from query_api.reads import Leaderboard, RedisKeys
from query_api.store_reads import StoreReads

log = structlog.get_logger(__name__)
T = TypeVar("T")

QUERY_TIMEOUT = 10.0


@dataclass
class Resources:
    settings: Settings
    pool: asyncpg.Pool
    redis: aioredis.Redis
    keys: RedisKeys
    clickhouse: ClickHouse
    projection: ProjectionTask | None
    cache: AnalyticsCache
    leaderboard: Leaderboard
    hot: ReadCache
    store: StoreReads

    async def analytics(self, key: Hashable, query: Callable[[Analytics], Awaitable[T]]) -> T:
        """Run an Analytics query, or reuse its answer while the data has not changed."""

        async def compute() -> T:
            return await query(await self.clickhouse.get())

        return await self.cache.get(key, compute)


@contextlib.asynccontextmanager
async def opened(settings: Settings) -> AsyncIterator[Resources]:
    """Open everything the API needs; close it all on exit, whatever failed in between."""
    async with contextlib.AsyncExitStack() as stack:
        # The projection holds one connection for its election lock; the rest serve requests.
        # A query that takes longer than this is answered 503, never left hanging.
        # The tables' owner makes what the API needs and grants the API's role; requests
        # are then served as that role, which cannot change what it only reads.
        await db_role.prepare(settings)
        pool = await asyncpg.create_pool(
            settings.api_dsn, min_size=2, max_size=12, command_timeout=QUERY_TIMEOUT
        )
        stack.push_async_callback(pool.close)
        client = aioredis.from_url(
            settings.redis_url, decode_responses=True, socket_timeout=5, socket_connect_timeout=2
        )
        stack.push_async_callback(client.aclose)
        keys = RedisKeys(settings.redis_prefix)
        clickhouse = ClickHouse(settings.clickhouse_dsn)
        stack.callback(clickhouse.close)
        projection: ProjectionTask | None = None
        if embedded_clickhouse(settings):
            await clickhouse.get()  # fail fast: nobody else may hold the chDB directory
            assert clickhouse.client is not None
            projection = start_projection(
                pool,
                ClickHouseProjection(clickhouse.client),
                regrant=lambda: db_role.prepare(settings),
            )
            stack.push_async_callback(projection.close)
            tracked = projection.projection
            # This process writes ClickHouse: answers stay valid until the next batch lands.
            cache = AnalyticsCache(version=lambda: tracked.applied)
        else:
            try:
                await clickhouse.get()
            except Exception as exc:  # a server that is down now is retried per request
                log.warning("clickhouse unavailable at startup", error=repr(exc))
            cache = AnalyticsCache(ttl=2.0)
        # The event store, for time travel (query_api/routes_history.py), as the API's role.
        store = StoreReads(settings.api_dsn)
        stack.callback(store.close)
        hot = await stack.enter_async_context(
            following(
                ReadCache(settings.api_cache_size, float(settings.api_cache_ttl_s)),
                settings.api_dsn,
                settings.redis_url,
                settings.redis_prefix,
            )
        )
        yield Resources(
            settings=settings,
            pool=pool,
            redis=client,
            keys=keys,
            clickhouse=clickhouse,
            projection=projection,
            cache=cache,
            leaderboard=Leaderboard(client, keys),
            hot=hot,
            store=store,
        )
