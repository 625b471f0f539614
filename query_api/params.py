"""Query parameters, declared once: the route parses them, the OpenAPI document lists them.

A route declares its parameters with ``@query(...)`` (one ``Param`` each: name, type,
default, bounds, description). The wrapper parses them before the handler runs, and the
handler reads each value by its declaration (``q[LIMIT]``): a declaration the route did
not make raises, so the route can only read what it declared. query_api/openapi.py
reads the same declarations from the routes to write the document's parameters.

Parsing is strict and every problem is collected and answered as one 422. Python's
int()/float() accept things no API should ("1_000", " 5 ", "nan", Arabic-Indic digits),
so values are matched against plain ASCII patterns first.
"""

from __future__ import annotations

import functools
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any, Generic, TypeVar

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response

from query_api.cursor import CursorError
from query_api.errors import InvalidParametersError

T = TypeVar("T")
Schema = dict[str, Any]

_INT = re.compile(r"^[+-]?[0-9]{1,18}$")
_NUMBER = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]{1,3})?$")
# RFC 3339 date-time: an offset is required; fractions past microseconds are cut.
_INSTANT = re.compile(
    r"^([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ]([0-9]{2}:[0-9]{2}:[0-9]{2})"
    r"(\.[0-9]{1,6})?(?:(?<=\.[0-9]{6})[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
# An instant this far ahead of the server's clock is a client's clock, not the future.
CLOCK_SKEW = timedelta(seconds=5)

MAX_ID_LENGTH = 128  # the same bound the ingest side enforces on org and lead ids


class Params:
    """Reads one request's parameters, collecting errors instead of raising at the first."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.errors: list[dict[str, Any]] = []

    @cached_property
    def query(self) -> QueryParams:
        # Parsed on first use: most hot requests (GET /leads/{id}) have no query string.
        return self.request.query_params

    def _fail(self, name: str, location: str, message: str) -> None:
        self.errors.append({"parameter": name, "in": location, "message": message})

    def integer(self, name: str, default: int, minimum: int, maximum: int) -> int:
        raw = self.query.get(name)
        if raw is None:
            return default
        if not _INT.match(raw):
            self._fail(name, "query", "must be an integer")
            return default
        value = int(raw)
        if not minimum <= value <= maximum:
            self._fail(name, "query", f"must be between {minimum} and {maximum}")
        return value

    def number(self, name: str, minimum: float, maximum: float) -> float | None:
        raw = self.query.get(name)
        if raw is None:
            return None
        value = float(raw) if _NUMBER.match(raw) else math.nan
        if not math.isfinite(value):  # also "1e999", which overflows to inf
            self._fail(name, "query", "must be a number")
            return None
        if not minimum <= value <= maximum:
            self._fail(name, "query", f"must be between {minimum:g} and {maximum:g}")
        return value

    def choice(self, name: str, choices: Collection[str]) -> str | None:
        raw = self.query.get(name)
        if raw is None:
            return None
        if raw not in choices:
            self._fail(name, "query", f"must be one of {', '.join(sorted(choices))}")
            return None
        return raw

    def text(self, name: str, max_length: int) -> str | None:
        raw = self.query.get(name)
        if raw is None:
            return None
        if not raw or len(raw) > max_length:
            self._fail(name, "query", f"must be 1 to {max_length} characters")
            return None
        return raw

    def instant(self, name: str, required: bool) -> datetime | None:
        raw = self.query.get(name)
        if raw is None:
            if required:
                self._fail(name, "query", "is required")
            return None
        m = _INSTANT.match(raw)
        try:
            if m is None:
                raise ValueError(raw)
            offset = "+00:00" if m[4] in "Zz" else m[4]
            value = datetime.fromisoformat(f"{m[1]}T{m[2]}{m[3] or ''}{offset}")
            value = value.astimezone(UTC)
        except (ValueError, OverflowError):
            self._fail(name, "query", "must be an RFC 3339 date-time with an offset")
            return None
        if value > datetime.now(UTC) + CLOCK_SKEW:
            self._fail(name, "query", "must not be in the future")
            return None
        return value

    def cursor(self, name: str, decode: Callable[[str], T]) -> T | None:
        raw = self.query.get(name)
        if not raw:  # an empty cursor is the first page, as in ?cursor=&limit=
            return None
        try:
            return decode(raw)
        except CursorError as exc:
            self._fail(name, "query", str(exc))
            return None

    def check(self) -> None:
        if self.errors:
            raise InvalidParametersError(self.errors)


def lead_id(request: Request, name: str = "id") -> str | None:
    """The path's lead id, or None when no lead can have it (blank, too long, NUL).

    Such ids answer 404 like any other unknown lead rather than 422: the id is a name to
    look up, and the ingest side guarantees no stored lead has one.
    """
    value = str(request.path_params.get(name, ""))
    if not value.strip() or len(value) > MAX_ID_LENGTH or "\x00" in value:
        return None
    return value


@dataclass(frozen=True, eq=False)
class Param(ABC, Generic[T]):
    """One optional query parameter: how the route parses it and how the document shows it.

    Compared by identity: a route reads a value by the very declaration it made.
    """

    name: str
    description: str

    @abstractmethod
    def read(self, p: Params) -> T: ...

    @abstractmethod
    def schema(self) -> Schema: ...

    def openapi(self) -> Schema:
        return {
            "name": self.name,
            "in": "query",
            "required": False,
            "schema": self.schema(),
            "description": self.description,
        }


@dataclass(frozen=True, eq=False)
class Integer(Param[int]):
    default: int
    minimum: int
    maximum: int

    def read(self, p: Params) -> int:
        return p.integer(self.name, self.default, self.minimum, self.maximum)

    def schema(self) -> Schema:
        return {
            "type": "integer",
            "minimum": self.minimum,
            "maximum": self.maximum,
            "default": self.default,
        }


@dataclass(frozen=True, eq=False)
class Number(Param[float | None]):
    minimum: float
    maximum: float

    def read(self, p: Params) -> float | None:
        return p.number(self.name, self.minimum, self.maximum)

    def schema(self) -> Schema:
        return {"type": "number", "minimum": self.minimum, "maximum": self.maximum}


@dataclass(frozen=True, eq=False)
class Choice(Param[str | None]):
    choices: tuple[str, ...]  # in the document's order

    def read(self, p: Params) -> str | None:
        return p.choice(self.name, self.choices)

    def schema(self) -> Schema:
        return {"type": "string", "enum": list(self.choices)}


@dataclass(frozen=True, eq=False)
class Text(Param[str | None]):
    max_length: int

    def read(self, p: Params) -> str | None:
        return p.text(self.name, self.max_length)

    def schema(self) -> Schema:
        return {"type": "string", "minLength": 1, "maxLength": self.max_length}


@dataclass(frozen=True, eq=False)
class Instant(Param[datetime | None]):
    """An RFC 3339 date-time, not in the future; ``required`` ones answer 422 when absent."""

    required: bool = False

    def read(self, p: Params) -> datetime | None:
        return p.instant(self.name, self.required)

    def schema(self) -> Schema:
        return {"type": "string", "format": "date-time"}

    def openapi(self) -> Schema:
        return {**super().openapi(), "required": self.required}


@dataclass(frozen=True, eq=False)
class Cursor(Param[T | None]):
    """An opaque page cursor; ``decode`` raises CursorError on a malformed one."""

    decode: Callable[[str], T]
    max_length: int
    pattern: str = field(default="^[A-Za-z0-9_-]*$")

    def read(self, p: Params) -> T | None:
        return p.cursor(self.name, self.decode)

    def schema(self) -> Schema:
        return {"type": "string", "maxLength": self.max_length, "pattern": self.pattern}


class Query:
    """The parsed values of one request, read by declaration: ``q[LIMIT]``."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[Param[Any], Any]) -> None:
        self._values = values

    def __getitem__(self, param: Param[T]) -> T:
        try:
            value: T = self._values[param]
        except KeyError:
            raise LookupError(
                f"query parameter {param.name!r} is not declared by this route"
            ) from None
        return value


Handler = Callable[[Request, Query], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]
_DECLARED = "query_params"


def query(*params: Param[Any]) -> Callable[[Handler], Endpoint]:
    """Declares a route's query parameters; the handler gets them parsed and checked."""
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise ValueError(f"a query parameter is declared twice: {names}")

    def wrap(handler: Handler) -> Endpoint:
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            p = Params(request)
            values = {param: param.read(p) for param in params}
            p.check()
            return await handler(request, Query(values))

        setattr(endpoint, _DECLARED, params)
        return endpoint

    return wrap


def declared(endpoint: Callable[..., Any]) -> tuple[Param[Any], ...]:
    """The query parameters an endpoint declared with ``@query``; none without it."""
    params: tuple[Param[Any], ...] = getattr(endpoint, _DECLARED, ())
    return params
