"""An in-process cache of the hot reads, evicted by the projections' change notices.

``GET /leads/{id}`` and ``GET /leaderboard`` are answered from encoded bodies kept in
memory. The read models announce every change atomically with the change
(projections/changes.py: PostgreSQL NOTIFY on commit, Redis PUBLISH inside the write
script), and two listeners evict what changed. Correctness rests on three rules:

- Caching is on only while both listeners are subscribed; losing either flushes
  everything and turns caching off until it is back, since notices sent meanwhile are lost.
- A fill carries the epoch read before its queries; any eviction in between bumps the
  epoch and the fill is dropped, so an answer read before a change never outlives it.
- Entries also expire (``ttl``), a safety net for changes made behind the projections' back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import redis.asyncio as aioredis
import redis.exceptions
import structlog
from prometheus_client import Counter
from redis.backoff import NoBackoff
from redis.retry import Retry

from projections import changes

log = structlog.get_logger(__name__)

SOURCES = frozenset({"postgres", "redis"})
RECONNECT_DELAY = 1.0
HEALTH_INTERVAL = 5.0
MAX_BOARDS_PER_ORG = 64
APPLICATION_NAME = "leadscore-api-changes"  # the listening connection, in pg_stat_activity

LOOKUPS = Counter("leadscore_api_cache_lookups_total", "Hot-read cache lookups", ["read", "result"])
_LEAD_HIT, _LEAD_MISS = LOOKUPS.labels("lead", "hit"), LOOKUPS.labels("lead", "miss")
_BOARD_HIT = LOOKUPS.labels("leaderboard", "hit")
_BOARD_MISS = LOOKUPS.labels("leaderboard", "miss")


class ReadCache:
    """Encoded answers by (org, lead) and by (org, leaderboard query), bounded and expiring."""

    def __init__(self, max_entries: int, ttl: float, clock: Callable[[], float] = time.monotonic):
        self.max_entries = max_entries
        self.ttl = ttl
        self.clock = clock
        self.epoch = 0
        self._leads: OrderedDict[tuple[str, str], tuple[float, bytes]] = OrderedDict()
        self._boards: dict[str, dict[bytes, tuple[float, bytes]]] = {}
        self._live: set[str] = set()

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0 and self._live >= SOURCES

    def status(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "listening": sorted(self._live),
            "leads": len(self._leads),
            "leaderboards": sum(len(b) for b in self._boards.values()),
        }

    # -- reads -----------------------------------------------------------------------

    def lead(self, org: str, lead_id: str) -> bytes | None:
        hit = self._leads.get((org, lead_id))
        if hit is None or hit[0] < self.clock():
            _LEAD_MISS.inc()
            return None
        _LEAD_HIT.inc()
        return hit[1]

    def board(self, org: str, query: bytes) -> bytes | None:
        hit = self._boards.get(org, {}).get(query)
        if hit is None or hit[0] < self.clock():
            _BOARD_MISS.inc()
            return None
        _BOARD_HIT.inc()
        return hit[1]

    # -- fills: ``ticket`` is ``epoch`` as read before querying the read models -------

    def put_lead(self, org: str, lead_id: str, body: bytes, ticket: int) -> None:
        if not self.enabled or ticket != self.epoch:
            return
        self._leads[(org, lead_id)] = (self.clock() + self.ttl, body)
        self._leads.move_to_end((org, lead_id))
        while len(self._leads) > self.max_entries:
            self._leads.popitem(last=False)

    def put_board(self, org: str, query: bytes, body: bytes, ticket: int) -> None:
        if not self.enabled or ticket != self.epoch:
            return
        if org not in self._boards and len(self._boards) >= self.max_entries:
            self._boards.clear()
        boards = self._boards.setdefault(org, {})
        if len(boards) >= MAX_BOARDS_PER_ORG:
            boards.clear()  # clients varying the query string get no unbounded growth
        boards[query] = (self.clock() + self.ttl, body)

    # -- evictions -------------------------------------------------------------------

    def notice(self, source: str, payload: str | bytes) -> None:
        """Apply one change notice from ``source`` ("postgres" or "redis")."""
        try:
            pairs = changes.decode(payload)
        except (ValueError, TypeError):
            log.warning("unreadable change notice; flushing", source=source)
            pairs = None
        if pairs is None:
            self.flush()
            return
        self.epoch += 1
        boards = source == "redis"  # leaderboards are read from Redis only
        for org, lead_id in pairs:
            self._leads.pop((org, lead_id), None)
            if boards:
                self._boards.pop(org, None)

    def flush(self) -> None:
        self.epoch += 1
        self._leads.clear()
        self._boards.clear()

    def subscribed(self, source: str) -> None:
        # Notices may have been missed before this subscription began.
        self.flush()
        self._live.add(source)
        log.info("cache listener subscribed", source=source, enabled=self.enabled)

    def unsubscribed(self, source: str) -> None:
        if source in self._live:
            log.warning("cache listener lost; caching off until it is back", source=source)
        self._live.discard(source)
        self.flush()


async def follow_postgres(dsn: str, cache: ReadCache) -> None:
    """LISTEN for the PostgreSQL projection's notices, reconnecting for ever."""
    while True:
        try:
            await _listen_postgres(dsn, cache)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.debug("postgres change listener error", error=repr(exc))
        finally:
            cache.unsubscribed("postgres")
        await asyncio.sleep(RECONNECT_DELAY)


async def _listen_postgres(dsn: str, cache: ReadCache) -> None:
    conn = await asyncpg.connect(
        dsn, timeout=5, server_settings={"application_name": APPLICATION_NAME}
    )
    try:
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _c: lost.set())

        def on_notice(_c: Any, _pid: int, _channel: str, payload: str) -> None:
            cache.notice("postgres", payload)

        await conn.add_listener(changes.PG_CHANNEL, on_notice)
        cache.subscribed("postgres")
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), HEALTH_INTERVAL)
            if not lost.is_set():
                # A dead peer does not always close the socket: ask.
                await conn.fetchval("SELECT 1", timeout=HEALTH_INTERVAL)
    finally:
        conn.terminate()


async def follow_redis(url: str, channel: str, cache: ReadCache) -> None:
    """SUBSCRIBE to the Redis projection's notices, reconnecting for ever.

    The client never retries by itself: a silent reconnect would hide lost notices.
    """
    while True:
        client = aioredis.from_url(url, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(channel)
            while True:
                message = await pubsub.get_message(timeout=HEALTH_INTERVAL)
                if message is None:
                    await pubsub.ping()  # answered as a "pong" message, or raises
                elif message["type"] == "subscribe":
                    cache.subscribed("redis")
                elif message["type"] == "message":
                    cache.notice("redis", message["data"])
        except (OSError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            log.debug("redis change listener error", error=repr(exc))
        finally:
            cache.unsubscribed("redis")
            with contextlib.suppress(Exception):
                await pubsub.aclose()
                await client.aclose()
        await asyncio.sleep(RECONNECT_DELAY)


@contextlib.asynccontextmanager
async def following(
    cache: ReadCache, pg_dsn: str, redis_url: str, redis_prefix: str
) -> AsyncIterator[ReadCache]:
    """Run both listeners for the duration of the block."""
    if cache.max_entries <= 0:
        yield cache
        return
    tasks = [
        asyncio.create_task(follow_postgres(pg_dsn, cache), name="cache-postgres"),
        asyncio.create_task(
            follow_redis(redis_url, changes.redis_channel(redis_prefix), cache),
            name="cache-redis",
        ),
    ]
    try:
        yield cache
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
