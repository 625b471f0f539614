"""Prometheus metrics of the API: requests by route template and status, and latency."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter(
    "leadscore_api_requests_total", "API requests answered", ["method", "route", "status"]
)
LATENCY = Histogram(
    "leadscore_api_request_seconds",
    "API request latency",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)


class PrometheusMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # Labelled children by (method, route, status): ``labels()`` on every request
        # costs more than the observation itself. Bounded by routes x methods x statuses.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def _series(self, method: str, route: str, status: int) -> tuple[Any, Any]:
        key = (method, route, status)
        series = self._children.get(key)
        if series is None:
            series = self._children[key] = (
                REQUESTS.labels(method, route, str(status)),
                LATENCY.labels(route),
            )
        return series

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            # Label by the matched route's template, never the raw path: ids would
            # explode the series count. The router leaves the route in the scope.
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            count, latency = self._series(scope["method"], label, status)
            count.inc()
            latency.observe(time.perf_counter() - start)


async def metrics(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
