"""Opaque keyset cursors: base64url of a small JSON array tagged with the listing it belongs to.

Clients must not parse them; the server validates every part on the way back in, so a
forged or truncated cursor is a 422, never a 500. Tenancy does not depend on them: every
query is filtered by the caller's org whatever the cursor says.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from typing import Any

import orjson

MAX_LENGTH = 512
_ALPHABET = re.compile(r"^[A-Za-z0-9_-]+$")


class CursorError(ValueError):
    """Not a cursor this server issued for this listing."""


def encode(kind: str, *values: Any) -> str:
    raw = orjson.dumps([kind, *values])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _decode(kind: str, cursor: str) -> list[Any]:
    if len(cursor) > MAX_LENGTH or not _ALPHABET.match(cursor):
        raise CursorError("malformed cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = orjson.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise CursorError("malformed cursor") from exc
    if not isinstance(value, list) or not value or value[0] != kind:
        raise CursorError("cursor belongs to another listing")
    return value[1:]


def decode_score_key(cursor: str) -> tuple[float, str]:
    """The (score, lead_id) of the last lead of the previous page of ``GET /leads``."""
    parts = _decode("leads", cursor)
    if len(parts) != 2:
        raise CursorError("malformed cursor")
    score, lead_id = parts
    # bool is an int subclass; a forged true/false must not pass as a score.
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        raise CursorError("malformed cursor")
    if not isinstance(lead_id, str) or not lead_id or "\x00" in lead_id:
        raise CursorError("malformed cursor")
    return float(score), lead_id


def decode_position(kind: str, cursor: str) -> int:
    """The log position of the last item of the previous page of a position-ordered listing."""
    parts = _decode(kind, cursor)
    if len(parts) != 1:
        raise CursorError("malformed cursor")
    (position,) = parts
    if isinstance(position, bool) or not isinstance(position, int) or not 0 < position < 2**63:
        raise CursorError("malformed cursor")
    return position
