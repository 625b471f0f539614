"""Bearer API keys: every request but the public ones is bound to the key's organization.

Authentication is a middleware rather than a per-route call so a new route cannot
forget it; routes read the org with ``org_of(request)`` and filter every read by it.

A verified key is cached (by hash) for ``cache_ttl`` seconds, or until it expires if
sooner; an unknown, revoked or expired key is cached as refused for ``negative_ttl``, so
repeating a made-up key costs no PostgreSQL query. Each key has its own token bucket
(query_api/limits.py); a refused key writes an audit log line with its key id (or, for
an unknown key, a short fingerprint of its hash), never the key.
"""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from adapters import tenancy
from query_api.errors import UNAVAILABLE, ForbiddenError, error_response, unauthorized
from query_api.limits import TokenBuckets, too_many

if TYPE_CHECKING:
    from query_api.resources import Resources

log = structlog.get_logger(__name__)

METRICS_PATH = "/metrics"
PUBLIC_PATHS = frozenset(
    {"/health", "/health/live", "/health/ready", METRICS_PATH, "/openapi.json"}
)
# The console signs people in with a session cookie of its own (query_api/console/).
CONSOLE_PREFIX = "/console"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the cache remembers of a key: its org and id, or why it was refused."""

    org_id: str | None
    key_id: str | None
    reason: str | None  # None: accepted
    admin: bool = False  # the key may also erase leads (``apikeys create --admin``)


class KeyCache:
    """Recently looked-up keys (by hash) -> verdict, so a hot client, or a client
    repeating a bad key, costs no database round trip.

    Bounded, and entries expire: a revoked key stops working within ``ttl`` seconds.
    """

    def __init__(self, ttl: float, max_size: int = 10_000) -> None:
        self.ttl = ttl
        self.max_size = max_size
        self._entries: OrderedDict[bytes, tuple[Verdict, float]] = OrderedDict()

    def get(self, digest: bytes) -> Verdict | None:
        hit = self._entries.get(digest)
        if hit is None:
            return None
        verdict, expires = hit
        if expires < time.monotonic():
            del self._entries[digest]
            return None
        return verdict

    def put(self, digest: bytes, verdict: Verdict, ttl: float | None = None) -> None:
        self._entries[digest] = (verdict, time.monotonic() + (self.ttl if ttl is None else ttl))
        self._entries.move_to_end(digest)
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)


def bearer_token(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


class BearerAuth:
    def __init__(
        self,
        app: ASGIApp,
        cache_ttl: float = 30.0,
        *,
        negative_ttl: float = 30.0,
        key_rate: float = 0.0,
        key_burst: int = 1,
        metrics_token: str = "",
    ) -> None:
        self.app = app
        self.cache = KeyCache(cache_ttl)
        self.refused = KeyCache(negative_ttl)
        self.buckets = TokenBuckets(key_rate, key_burst)
        self.metrics_token = metrics_token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/"):
            await self.app(scope, receive, send)
            return
        if path in PUBLIC_PATHS:
            if path == METRICS_PATH and self.metrics_token and not self._metrics_allowed(scope):
                await unauthorized("/metrics requires its token")(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        if token is None:
            await unauthorized("missing bearer API key")(scope, receive, send)
            return
        if not tenancy.looks_like_key(token):
            await unauthorized("invalid API key")(scope, receive, send)
            return
        digest = tenancy.hash_key(token)
        verdict = self.cache.get(digest) or self.refused.get(digest)
        if verdict is None:
            resources: Resources = scope["app"].state.resources
            try:
                verdict = await self._verify(resources, token, digest)
            except UNAVAILABLE as exc:
                log.warning("key lookup failed", error=repr(exc))
                response = error_response(
                    503, "cannot verify the API key now; retry later", headers={"Retry-After": "1"}
                )
                await response(scope, receive, send)
                return
        if verdict.reason is not None or verdict.org_id is None:
            log.info(
                "audit: api key refused",
                audit=True,
                key_id=verdict.key_id,
                key_fingerprint=None if verdict.key_id else tenancy.fingerprint(token),
                reason=verdict.reason,
                path=path,
            )
            await unauthorized("invalid API key")(scope, receive, send)
            return
        wait = self.buckets.take(verdict.key_id or verdict.org_id)
        if wait > 0:
            exc = too_many(wait, "API key")
            await error_response(429, exc.message, headers=exc.headers)(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["org_id"] = verdict.org_id
        state["admin"] = verdict.admin
        await self.app(scope, receive, send)

    async def _verify(self, resources: Resources, token: str, digest: bytes) -> Verdict:
        record = await tenancy.lookup_key(resources.pool, token)
        if record is None:
            verdict = Verdict(None, None, "unknown")
        elif record.revoked:
            verdict = Verdict(None, record.id, "revoked")
        elif record.expired:
            verdict = Verdict(None, record.id, "expired")
        else:
            verdict = Verdict(record.org_id, record.id, None, record.admin)
        if verdict.reason is not None:
            self.refused.put(digest, verdict)
            return verdict
        ttl = self.cache.ttl
        if record is not None and record.expires_at is not None:
            ttl = min(ttl, max(0.0, record.expires_at.timestamp() - time.time()))
        self.cache.put(digest, verdict, ttl)
        try:
            # Once per cache fill, so last_used_at is as fresh as the cache's TTL.
            await tenancy.touch_key(resources.pool, verdict.key_id or "")
        except Exception as exc:  # a read-only role or a blip: the request still goes on
            log.debug("last_used_at not recorded", key_id=verdict.key_id, error=repr(exc))
        return verdict

    def _metrics_allowed(self, scope: Scope) -> bool:
        token = bearer_token(scope) or ""
        return hmac.compare_digest(token.encode(), self.metrics_token.encode())


def require_admin(request: Request) -> None:
    """403 unless the request's API key is an admin key (``apikeys create --admin``)."""
    if not request.scope["state"].get("admin", False):
        raise ForbiddenError("this operation needs an admin API key (apikeys create --admin)")


def org_of(request: Request) -> str:
    """The organization of the request's API key (set by BearerAuth)."""
    org: str = request.scope["state"]["org_id"]  # not request.state: that builds an object
    return org
