"""What the API holds open for its lifetime: pools, clients, and (with chDB) a projection.

With the embedded ClickHouse default (``chdb://``) only one process may open the data
directory, so the API process itself follows the log into ClickHouse and answers
analytics from the same client. With a ClickHouse server the worker runs that projection
and the API only reads.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import redis.asyncio as aioredis
import structlog
from clickhouse_connect.driver.client import Client

from leadscore import tenancy
from leadscore.settings import Settings
from projections.analytics import Analytics
from projections.base import ProjectionRunner
from projections.clickhouse import ClickHouseProjection, connect
from projections.log import LogReader, table_exists
from projections.runner import embedded_clickhouse
from query_api.reads import RedisKeys

log = structlog.get_logger(__name__)
T = TypeVar("T")

RESTART_DELAY = 2.0
RETRY_AFTER = 5.0


class ClickHouse:
    """The ClickHouse client and its Analytics, connected at most once and shared.

    A server may be down when the API starts; it then connects on first use (and
    retries on later requests) instead of refusing to start, so the rest of the API
    keeps serving. chDB is opened eagerly: failing to open it is a configuration error.
    """

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.client: Client | None = None
        self.analytics: Analytics | None = None
        self._lock = asyncio.Lock()
        self._failure: tuple[float, BaseException] | None = None

    async def get(self) -> Analytics:
        if self.analytics is not None:
            return self.analytics
        async with self._lock:
            if self.analytics is None:
                loop = asyncio.get_running_loop()
                # Within RETRY_AFTER of a failed connect, fail at once instead of letting
                # every request wait out another connect timeout.
                if self._failure and loop.time() - self._failure[0] < RETRY_AFTER:
                    raise self._failure[1]
                try:
                    client = await asyncio.to_thread(connect, self.dsn)
                except Exception as exc:
                    self._failure = (loop.time(), exc)
                    raise
                try:
                    # Tables exist before the first query even if no projection ran yet.
                    await ClickHouseProjection(client).setup()
                except Exception as exc:
                    client.close()
                    self._failure = (loop.time(), exc)
                    raise
                self._failure = None
                self.client, self.analytics = client, Analytics(client)
        assert self.analytics is not None
        return self.analytics

    async def ping(self) -> None:
        await self.get()
        assert self.client is not None
        await asyncio.to_thread(self.client.command, "SELECT 1")

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = self.analytics = None


@dataclass
class ProjectionTask:
    """The ClickHouse projection following the log inside the API process, restarted on failure."""

    runner: ProjectionRunner
    projection: ClickHouseProjection
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    last_error: str | None = None
    restarts: int = 0

    def start(self) -> None:
        self.task = asyncio.create_task(self._supervise(), name="clickhouse-projection")

    async def _supervise(self) -> None:
        while not self.stop.is_set():
            try:
                await self.runner.follow(self.projection, self.stop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Analytics go stale, but the API stays up; /health shows the error.
                self.last_error = repr(exc)
                self.restarts += 1
                log.exception("clickhouse projection failed; restarting")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), RESTART_DELAY)

    async def status(self) -> dict[str, Any]:
        position = await self.projection.position()
        pool = self.runner.pool
        head = await LogReader(pool).head() if await table_exists(pool) else 0
        return {
            "name": self.projection.name,
            "running": self.task is not None and not self.task.done(),
            "position": position,
            "head": head,
            "lag": max(head - position, 0),
            "restarts": self.restarts,
            "last_error": self.last_error,
        }

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            try:
                await asyncio.wait_for(self.task, 10)
            except TimeoutError:
                self.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.task


@dataclass
class Resources:
    settings: Settings
    pool: asyncpg.Pool
    redis: aioredis.Redis
    keys: RedisKeys
    clickhouse: ClickHouse
    projection: ProjectionTask | None

    async def analytics(self, query: Callable[[Analytics], Awaitable[T]]) -> T:
        return await query(await self.clickhouse.get())


@contextlib.asynccontextmanager
async def opened(settings: Settings) -> AsyncIterator[Resources]:
    """Open everything the API needs; close it all on exit, whatever failed in between."""
    async with contextlib.AsyncExitStack() as stack:
        # The projection holds one connection for its election lock; the rest serve requests.
        pool = await asyncpg.create_pool(settings.pg_dsn, min_size=2, max_size=12)
        stack.push_async_callback(pool.close)
        await tenancy.ensure_schema(pool)
        client = aioredis.from_url(
            settings.redis_url, decode_responses=True, socket_timeout=5, socket_connect_timeout=2
        )
        stack.push_async_callback(client.aclose)
        clickhouse = ClickHouse(settings.clickhouse_dsn)
        stack.callback(clickhouse.close)
        projection: ProjectionTask | None = None
        if embedded_clickhouse(settings):
            await clickhouse.get()  # fail fast: nobody else may hold the chDB directory
            assert clickhouse.client is not None
            projection = ProjectionTask(
                ProjectionRunner(pool, []), ClickHouseProjection(clickhouse.client)
            )
            projection.start()
            stack.push_async_callback(projection.close)
        else:
            try:
                await clickhouse.get()
            except Exception as exc:  # a server that is down now is retried per request
                log.warning("clickhouse unavailable at startup", error=repr(exc))
        yield Resources(
            settings=settings,
            pool=pool,
            redis=client,
            keys=RedisKeys(settings.redis_prefix),
            clickhouse=clickhouse,
            projection=projection,
        )
