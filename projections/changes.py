"""Change notices: which leads a projection batch touched, for caches of the read models.

Each writer announces the leads it changed atomically with the change itself:
PostgreSQL with ``NOTIFY`` inside the batch's transaction (delivered on commit), Redis
with ``PUBLISH`` inside the batch's Lua script. A reader caching answers evicts them.

A payload is a JSON array of org and lead ids, flat (``[org1, lead1, org2, lead2, ...]``),
or ``"*"``: everything changed (a rebuild).
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson

PG_CHANNEL = "leadscore_read_model"
FLUSH = "*"
# PostgreSQL's NOTIFY payload must stay under 8,000 bytes.
MAX_PAYLOAD = 7_000


def redis_channel(prefix: str) -> str:
    return f"{prefix}:changes"


def encode(pairs: Iterable[tuple[str, str]]) -> list[str]:
    """Payloads naming every (org, lead) pair, each under MAX_PAYLOAD bytes."""
    payloads: list[str] = []
    chunk: list[str] = []
    size = 2
    for org, lead in pairs:
        item = len(orjson.dumps(org)) + len(orjson.dumps(lead)) + 2  # and two commas
        if chunk and size + item > MAX_PAYLOAD:
            payloads.append(orjson.dumps(chunk).decode())
            chunk, size = [], 2
        chunk += (org, lead)
        size += item
    if chunk:
        payloads.append(orjson.dumps(chunk).decode())
    return payloads


def decode(payload: str | bytes) -> list[tuple[str, str]] | None:
    """The (org, lead) pairs of a payload; None means everything (a flush)."""
    if payload in (FLUSH, FLUSH.encode()):
        return None
    flat = orjson.loads(payload)
    return list(zip(flat[::2], flat[1::2], strict=True))
