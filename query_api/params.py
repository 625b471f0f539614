"""Strict query-parameter parsing: every problem is collected and answered as one 422.

Python's int()/float() accept things no API should ("1_000", " 5 ", "nan", Arabic-Indic
digits), so values are matched against plain ASCII patterns first.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection
from functools import cached_property
from typing import Any, TypeVar

from starlette.datastructures import QueryParams
from starlette.requests import Request

from query_api.cursor import CursorError
from query_api.errors import InvalidParametersError

T = TypeVar("T")

_INT = re.compile(r"^[+-]?[0-9]{1,18}$")
_NUMBER = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]{1,3})?$")

MAX_ID_LENGTH = 128  # the same bound the ingest side enforces on org and lead ids


class Params:
    """Reads one request's parameters, collecting errors instead of raising at the first."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.path = request.path_params
        self.errors: list[dict[str, Any]] = []

    @cached_property
    def query(self) -> QueryParams:
        # Parsed on first use: most hot requests (GET /leads/{id}) have no query string.
        return self.request.query_params

    def _fail(self, name: str, location: str, message: str) -> None:
        self.errors.append({"parameter": name, "in": location, "message": message})

    def lead_id(self, name: str = "id") -> str | None:
        """The path's lead id, or None when no lead can have it (blank, too long, NUL).

        Such ids answer 404 like any other unknown lead rather than 422: the id is a
        name to look up, and the ingest side guarantees no stored lead has one.
        """
        value = str(self.path.get(name, ""))
        if not value.strip() or len(value) > MAX_ID_LENGTH or "\x00" in value:
            return None
        return value

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
