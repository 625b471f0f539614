"""The Starlette application: ``create_app(settings)`` wires routes, middleware and resources."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute

from adapters.gc_settle import settle_gc
from adapters.settings import Settings
from query_api import (
    resources,
    routes_analytics,
    routes_dead_letters,
    routes_history,
    routes_leads,
    routes_models,
    routes_privacy,
    routes_system,
    routes_webhooks,
)
from query_api.auth import BearerAuth
from query_api.console import pages as console
from query_api.errors import exception_handlers
from query_api.hotpath import HotReads
from query_api.limits import BodyLimit, IpRateLimit
from query_api.metrics import PrometheusMiddleware


def routes(server_url: str | None = None) -> list[BaseRoute]:
    """Every route the API serves (``create_app`` serves these; the OpenAPI document
    describes them)."""
    return [
        *routes_leads.routes,
        *routes_privacy.routes,
        *routes_history.routes,
        *routes_analytics.routes,
        *routes_dead_letters.routes,
        *routes_models.routes,
        *routes_webhooks.routes,
        *routes_system.routes(server_url),
    ]


def create_app(settings: Settings, *, key_cache_ttl: float = 30.0) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with resources.opened(settings) as res:
            app.state.resources = res
            # Everything loaded by now (modules, pools, clients, chDB) lives as long as
            # the process: frozen out of full collections, whose pauses would land in
            # the p99 of every request in flight.
            settle_gc()
            yield

    app = Starlette(
        # The console's pages sit beside the API's routes; not in the API's document.
        routes=[*routes(), *console.routes()],
        # Outermost first: metrics see every answer, 401s, 413s and 429s included; a
        # client's IP spends a token before anything costs work.
        middleware=[
            Middleware(PrometheusMiddleware),
            Middleware(IpRateLimit, rate=settings.api_ip_rate, burst=settings.api_ip_burst),
            Middleware(BodyLimit, max_bytes=settings.api_max_body_bytes),
            Middleware(
                BearerAuth,
                cache_ttl=key_cache_ttl,
                negative_ttl=settings.api_negative_cache_ttl_s,
                key_rate=settings.api_key_rate,
                key_burst=settings.api_key_burst,
                metrics_token=settings.api_metrics_token,
            ),
            Middleware(
                HotReads, lead_route=routes_leads.LEAD, leaderboard_route=routes_leads.LEADERBOARD
            ),
        ],
        exception_handlers=exception_handlers(),
        lifespan=lifespan,
    )
    # An API answers a path it does not serve with a JSON 404, never a redirect (a lead
    # id of "/" arrives as /leads// and would otherwise be redirected to /leads).
    app.router.redirect_slashes = False
    app.state.console = console.Console(settings)
    return app
