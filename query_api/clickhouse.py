"""The API's ClickHouse side: one shared client with its Analytics, and a result cache."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

from clickhouse_connect.driver.client import Client

from projections.analytics import Analytics
from projections.clickhouse import ClickHouseProjection, connect

T = TypeVar("T")

RETRY_AFTER = 5.0


class ClickHouse:
    """The ClickHouse client and its Analytics, connected at most once and shared.

    A server may be down when the API starts; it then connects on first use (and
    retries on later requests) instead of refusing to start, so the rest of the API
    keeps serving. chDB is opened eagerly by the caller: failing to open it is a
    configuration error.
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


class AnalyticsCache:
    """Analytics answers by (query, org, arguments), kept while the data is unchanged.

    ``version`` names the data: the projected log position when this process runs the
    projection (answers stay exact), else a time bucket of ``ttl`` seconds. Concurrent
    identical requests share one computation, so a dashboard refreshed by many users
    costs one ClickHouse query per change, not one per request.
    """

    def __init__(
        self, version: Callable[[], Hashable] | None = None, ttl: float = 2.0, size: int = 1024
    ) -> None:
        self.version = version or (lambda: int(time.monotonic() / ttl))
        self.size = size
        self._entries: OrderedDict[Hashable, tuple[Hashable, asyncio.Future[Any]]] = OrderedDict()

    async def get(self, key: Hashable, compute: Callable[[], Awaitable[T]]) -> T:
        version = self.version()
        hit = self._entries.get(key)
        if hit is not None and hit[0] == version and not hit[1].cancelled():
            self._entries.move_to_end(key)
            try:
                # Shielded: one waiter going away must not cancel the others' answer.
                result: T = await asyncio.shield(hit[1])
                return result
            except asyncio.CancelledError:
                if not hit[1].cancelled():
                    raise  # this request itself was cancelled
                # The computing request was cancelled: compute it here instead.
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._entries[key] = (version, future)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        try:
            value = await compute()
        except asyncio.CancelledError:
            self._evict(key, future)
            future.cancel()
            raise
        except Exception as exc:
            # Failures are not cached: the next request tries again.
            self._evict(key, future)
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        future.set_result(value)
        return value

    def _evict(self, key: Hashable, future: asyncio.Future[Any]) -> None:
        hit = self._entries.get(key)
        if hit is not None and hit[1] is future:
            del self._entries[key]
