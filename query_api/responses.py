"""orjson-rendered JSON responses (Starlette ships only the stdlib renderer)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
from starlette.responses import Response


def _default(value: Any) -> Any:
    # orjson handles datetime, UUID and dataclasses natively; PostgreSQL numerics need help.
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(content: Any) -> bytes:
    return orjson.dumps(content, default=_default, option=orjson.OPT_NON_STR_KEYS)


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)


class Encoded(Response):
    """A body already rendered by ``dumps`` (e.g. kept in the hot-read cache)."""

    media_type = "application/json"
