"""A model's drift: the key's org's recent features and scores against the training set."""

from __future__ import annotations

import asyncio
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from adapters.drift import NoReferenceError, drift_report, model_metadata
from adapters.model_registry import GLOBAL, registered_scope, scope_of
from query_api.auth import org_of
from query_api.errors import ApiError, NotFoundError
from query_api.params import Integer, Query, query
from query_api.responses import JSON
from query_api.routes_leads import resources

DEFAULT_WINDOW_HOURS = 24
MAX_WINDOW_HOURS = 24 * 30
WINDOW_HOURS = Integer(
    "window_hours",
    "Hours of recent scoring to compare with training.",
    DEFAULT_WINDOW_HOURS,
    1,
    MAX_WINDOW_HOURS,
)


@query(WINDOW_HOURS)
async def get_drift(request: Request, q: Query) -> Response:
    hours = q[WINDOW_HOURS]
    res = resources(request)
    org = org_of(request)
    version = str(request.path_params["version"])
    meta = await asyncio.to_thread(model_metadata, Path(res.settings.model_dir), version)
    # Another org's model answers exactly like a missing one (as /models leaves it out):
    # its scope in the registry, or, not registered yet, the org it was trained for.
    if meta is None:
        raise NotFoundError(f"no model {version!r}")
    scope = await registered_scope(res.pool, version) or scope_of(meta)
    if scope not in (GLOBAL, org):
        raise NotFoundError(f"no model {version!r}")
    try:
        report = await drift_report(res.pool, meta, org, hours)
    except NoReferenceError as exc:
        raise ApiError(409, str(exc)) from None
    return JSON(report)


routes = [Route("/models/{version}/drift", get_drift, methods=["GET"])]
