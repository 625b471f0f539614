"""Request limits: token-bucket rate limits (per client IP here, per key in auth.py) and a
request body limit.

The buckets live in the API process: the API runs as one process (query_api/server.py),
so one process's buckets are the whole truth. Several API processes behind a load
balancer would each allow the full rate; they would then need a shared store (Redis).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from query_api.errors import ApiError, error_response


class TokenBuckets:
    """One bucket per name: ``rate`` tokens a second, holding at most ``burst``.

    Bounded: past ``max_size`` names the least recently seen is forgotten (it comes
    back with a full bucket, which only ever errs on the generous side).
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        max_size: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.max_size = max_size
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, name: str) -> float:
        """0 when a request may go now (its token taken), else seconds until it may."""
        if not self.enabled:
            return 0.0
        now = self.clock()
        tokens, then = self._buckets.get(name, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        if tokens >= 1.0:
            self._buckets[name] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self._buckets[name] = (tokens, now)
            wait = (1.0 - tokens) / self.rate
        self._buckets.move_to_end(name)
        while len(self._buckets) > self.max_size:
            self._buckets.popitem(last=False)
        return wait


def too_many(wait: float, what: str) -> ApiError:
    return ApiError(
        429,
        f"too many requests for this {what}; retry after the Retry-After seconds",
        headers={"Retry-After": str(max(1, math.ceil(wait)))},
    )


def client_ip(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class IpRateLimit:
    """Every request, authenticated or not, spends a token of its client IP's bucket."""

    def __init__(self, app: ASGIApp, rate: float, burst: int) -> None:
        self.app = app
        self.buckets = TokenBuckets(rate, burst)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.buckets.enabled:
            wait = self.buckets.take(client_ip(scope))
            if wait > 0:
                exc = too_many(wait, "client")
                await error_response(429, exc.message, headers=exc.headers)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """A request body over ``max_bytes`` answers 413: by its Content-Length before any
    work, or, sent without one, as soon as reading it passes the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_bytes):
                await self._refuse(scope, receive, send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise ApiError(413, self._message())
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return f"request body over {self.max_bytes} bytes"

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(413, self._message())(scope, receive, send)
