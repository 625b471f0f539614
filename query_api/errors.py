"""Every error answers JSON of one shape: ``{"error": code, "message": text, "details": [...]}``.

Input problems are 4xx; a dependency outage is 503; anything else is a bug, logged with
its traceback and answered as a JSON 500 so a client never sees an HTML page.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import redis.exceptions
import structlog
from clickhouse_connect.driver.exceptions import DatabaseError as ClickHouseDatabaseError
from clickhouse_connect.driver.exceptions import OperationalError as ClickHouseOperationalError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from query_api.responses import JSON

log = structlog.get_logger(__name__)

# What a dependency outage looks like from each driver (clickhouse-connect raises
# OperationalError for transport failures). These answer 503, not 500: the request was fine.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # includes TimeoutError and refused connections
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ClickHouseOperationalError,
    # A read model being rebuilt is briefly absent (`leadscore projections rebuild`).
    asyncpg.UndefinedTableError,
)

_REASONS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    422: "invalid_parameters",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or []
        self.headers = headers


class NotFoundError(ApiError):
    def __init__(self, message: str = "not found") -> None:
        super().__init__(404, message)


class ForbiddenError(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(403, message)


class InvalidParametersError(ApiError):
    def __init__(self, details: list[dict[str, Any]]) -> None:
        super().__init__(422, "invalid parameters", details)


def error_response(
    status: int,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = {"error": _REASONS.get(status, "error"), "message": message, "details": details or []}
    return JSON(body, status_code=status, headers=headers)


def unauthorized(message: str) -> Response:
    # RFC 6750: a bearer-protected resource names its scheme in the challenge.
    return error_response(401, message, headers={"WWW-Authenticate": 'Bearer realm="leadscore"'})


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.details, exc.headers)


async def http_error(request: Request, exc: Exception) -> Response:
    # Starlette's routing raises these for unknown paths (404) and methods (405).
    assert isinstance(exc, HTTPException)
    message = "no such resource" if exc.status_code == 404 else str(exc.detail)
    return error_response(exc.status_code, message, headers=exc.headers)


async def unavailable(request: Request, exc: Exception) -> Response:
    log.warning("dependency unavailable", path=request.url.path, error=repr(exc))
    return error_response(
        503, "a backing store is unavailable; retry later", headers={"Retry-After": "1"}
    )


async def clickhouse_error(request: Request, exc: Exception) -> Response:
    # ClickHouse names a missing table only in the message; anything else is a bug.
    if "UNKNOWN_TABLE" in str(exc):
        return await unavailable(request, exc)
    return await internal_error(request, exc)


async def internal_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error", path=request.url.path, exc_info=exc)
    return error_response(500, "internal error")


def exception_handlers() -> dict[Any, Any]:
    handlers: dict[Any, Any] = {ApiError: api_error, HTTPException: http_error}
    for exc_type in UNAVAILABLE:
        handlers[exc_type] = unavailable
    handlers[ClickHouseDatabaseError] = clickhouse_error
    # Exception goes to ServerErrorMiddleware: the last resort, still JSON.
    handlers[Exception] = internal_error
    return handlers
