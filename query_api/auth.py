"""Bearer API keys: every request but the public ones is bound to the key's organization.

Authentication is a middleware rather than a per-route call so a new route cannot
forget it; routes read the org with ``org_of(request)`` and filter every read by it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import TYPE_CHECKING

import structlog
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from leadscore import tenancy
from query_api.errors import UNAVAILABLE, error_response, unauthorized

if TYPE_CHECKING:
    from query_api.resources import Resources

log = structlog.get_logger(__name__)

PUBLIC_PATHS = frozenset({"/health", "/metrics", "/openapi.json"})


class KeyCache:
    """Recently verified keys (by hash) -> org, so a hot client costs no database round trip.

    Bounded, and entries expire: a revoked key stops working within ``ttl`` seconds.
    """

    def __init__(self, ttl: float, max_size: int = 10_000) -> None:
        self.ttl = ttl
        self.max_size = max_size
        self._entries: OrderedDict[bytes, tuple[str, float]] = OrderedDict()

    def get(self, digest: bytes) -> str | None:
        hit = self._entries.get(digest)
        if hit is None:
            return None
        org, expires = hit
        if expires < time.monotonic():
            del self._entries[digest]
            return None
        return org

    def put(self, digest: bytes, org: str) -> None:
        self._entries[digest] = (org, time.monotonic() + self.ttl)
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
    def __init__(self, app: ASGIApp, cache_ttl: float = 30.0) -> None:
        self.app = app
        self.cache = KeyCache(cache_ttl)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
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
        org = self.cache.get(digest)
        if org is None:
            resources: Resources = scope["app"].state.resources
            try:
                org = await tenancy.org_for_key(resources.pool, token)
            except UNAVAILABLE as exc:
                log.warning("key lookup failed", error=repr(exc))
                response = error_response(
                    503, "cannot verify the API key now; retry later", headers={"Retry-After": "1"}
                )
                await response(scope, receive, send)
                return
            if org is None:
                await unauthorized("invalid API key")(scope, receive, send)
                return
            self.cache.put(digest, org)
        scope.setdefault("state", {})["org_id"] = org
        await self.app(scope, receive, send)


def org_of(request: Request) -> str:
    """The organization of the request's API key (set by BearerAuth)."""
    org: str = request.scope["state"]["org_id"]  # not request.state: that builds an object
    return org
