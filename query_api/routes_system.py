"""Operations and catalogue: health, metrics, the OpenAPI document, the models."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from adapters.model_registry import GLOBAL, assignments, scope_of
from adapters.modelstore import list_models
from query_api import metrics
from query_api.auth import org_of
from query_api.openapi import document
from query_api.responses import JSON, dumps
from query_api.routes_leads import resources

log = structlog.get_logger(__name__)

CHECK_TIMEOUT = 2.0


async def _check(probe: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        await asyncio.wait_for(probe(), CHECK_TIMEOUT)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:300]
        status, detail = "down", error or type(exc).__name__
    else:
        status, detail = "up", None
    return {
        "status": status,
        "latency_ms": round((time.perf_counter() - start) * 1000, 2),
        "error": detail,
    }


async def live(request: Request) -> Response:
    """Liveness: the process answers. No dependency is checked, so an outage of
    PostgreSQL never gets the API restarted (readiness takes it out of rotation)."""
    return JSON({"status": "ok"})


async def health(request: Request) -> Response:
    """Readiness (also at /health): every dependency answers."""
    res = resources(request)
    pg, rd, ch = await asyncio.gather(
        _check(lambda: res.pool.fetchval("SELECT 1")),
        _check(res.redis.ping),
        _check(res.clickhouse.ping),
    )
    ok = all(c["status"] == "up" for c in (pg, rd, ch))
    projection = None
    if res.projection is not None:
        try:
            projection = await asyncio.wait_for(res.projection.status(), CHECK_TIMEOUT)
        except Exception as exc:
            log.warning("projection status unavailable", error=repr(exc))
    body = {
        "status": "ok" if ok else "unavailable",
        "checks": {"postgresql": pg, "redis": rd, "clickhouse": ch},
        "projection": projection,
        "read_cache": res.hot.status(),
    }
    return JSON(body, status_code=200 if ok else 503)


def _model(meta: dict[str, Any], active: str | None, registry: dict[str, Any]) -> dict[str, Any]:
    def count(key: str) -> int | None:
        value = meta.get(key)
        return value if isinstance(value, int) and value >= 0 else None

    trained_at = meta.get("trained_at")
    metrics_ = meta.get("metrics")
    return {
        "version": str(meta["version"]),
        "trained_at": None if trained_at is None else str(trained_at),
        "active": str(meta["version"]) == active,
        # Not in the registry yet: no worker has started since it was trained.
        "scope": registry.get("scope", "global"),
        "status": registry.get("status", "unregistered"),
        "metrics": metrics_ if isinstance(metrics_, dict) else {},
        "feature_names": [str(f) for f in meta.get("feature_names", [])],
        "n_train": count("n_train"),
        "n_holdout": count("n_holdout"),
    }


async def models(request: Request) -> Response:
    res = resources(request)
    org = org_of(request)
    metas = await asyncio.to_thread(list_models, Path(res.settings.model_dir))
    rows = await assignments(res.pool)
    registry = {r["version"]: r for r in rows}

    # Global models and the caller's own; another org's models are not the caller's to see.
    # A model no worker has registered yet counts as the org it was trained for.
    def scope(meta: dict[str, Any]) -> str:
        return str(registry.get(str(meta["version"]), {}).get("scope") or scope_of(meta))

    metas = [m for m in metas if scope(m) in (GLOBAL, org)]
    actives = {r["scope"]: r["version"] for r in rows if r["status"] == "active"}
    newest = str(metas[-1]["version"]) if metas else None
    active = actives.get(org) or actives.get(GLOBAL) or res.settings.model_version or newest
    items = [_model(m, active, registry.get(str(m["version"]), {})) for m in metas]
    current = next((m for m in items if m["active"]), None)
    return JSON({"active_version": active, "active": current, "items": items})


def openapi_route(server_url: str | None) -> Route:
    rendered: list[bytes] = []

    async def openapi(request: Request) -> Response:
        # The document of the routes this app serves, rendered on the first request: the
        # routes never change at run time.
        if not rendered:
            rendered.append(dumps(document(request.app.routes, server_url)))
        return Response(rendered[0], media_type="application/json")

    return Route("/openapi.json", openapi, methods=["GET"])


def routes(server_url: str | None = None) -> list[Route]:
    return [
        Route("/health", health, methods=["GET"]),
        Route("/health/live", live, methods=["GET"]),
        Route("/health/ready", health, methods=["GET"]),
        Route("/metrics", metrics.metrics, methods=["GET"]),
        Route("/models", models, methods=["GET"]),
        openapi_route(server_url),
    ]
