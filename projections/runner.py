"""Opening the read models' stores and running their projections, in or beside a process."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import asyncpg
import redis.asyncio as aioredis
import structlog

from adapters.settings import Settings
from projections.base import Projection, ProjectionRunner
from projections.postgres import PostgresProjection
from projections.redis import RedisProjection

log = structlog.get_logger(__name__)

ALL = ("postgres", "redis", "clickhouse")


def embedded_clickhouse(settings: Settings) -> bool:
    return settings.clickhouse_dsn.startswith("chdb://")


def worker_projection_names(settings: Settings) -> list[str]:
    """A worker runs PostgreSQL and Redis; ClickHouse too unless it is embedded chdb."""
    if settings.worker_projections != "auto":
        return [n.strip() for n in settings.worker_projections.split(",") if n.strip()]
    names = ["postgres", "redis"]
    if not embedded_clickhouse(settings):
        names.append("clickhouse")
    return names


@asynccontextmanager
async def opened(
    settings: Settings, names: Sequence[str]
) -> AsyncIterator[tuple[asyncpg.Pool, list[Projection]]]:
    """The projections named, with the connections they need, closed on exit."""
    unknown = set(names) - set(ALL)
    if unknown:
        raise ValueError(f"unknown projections {sorted(unknown)}; known: {', '.join(ALL)}")
    pool = await asyncpg.create_pool(settings.pg_dsn, min_size=1, max_size=4 + len(names))
    client = aioredis.from_url(settings.redis_url) if "redis" in names else None
    ch = None
    projections: list[Projection] = []
    try:
        for name in names:
            if name == "postgres":
                projections.append(PostgresProjection(pool))
            elif name == "redis":
                assert client is not None
                projections.append(RedisProjection(client, settings.redis_prefix))
            else:
                from projections.clickhouse import ClickHouseProjection, connect

                ch = connect(settings.clickhouse_dsn)
                projections.append(ClickHouseProjection(ch))
        yield pool, projections
    finally:
        for p in projections:
            await p.close()
        if client is not None:
            await client.aclose()
        if ch is not None:
            ch.close()
        await pool.close()


async def run_projections(settings: Settings, names: Sequence[str], stop: asyncio.Event) -> None:
    async with opened(settings, names) as (pool, projections):
        linger = settings.projection_linger_ms / 1000
        await ProjectionRunner(pool, projections, idle_wait=linger).run(stop)


def start_projection_thread(
    settings: Settings, names: Sequence[str]
) -> tuple[threading.Thread, threading.Event]:
    """Run projections on their own event loop beside a worker; set the event to stop."""
    stop_flag = threading.Event()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def wake() -> None:
            stop_flag.wait()
            # The loop may be gone already: with no projections to run it ends at once.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)

        threading.Thread(target=wake, daemon=True).start()
        await run_projections(settings, names, stop)

    def target() -> None:
        try:
            asyncio.run(main())
        except Exception:
            log.exception("projections stopped")

    thread = threading.Thread(target=target, name="projections", daemon=True)
    thread.start()
    return thread, stop_flag
