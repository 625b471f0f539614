"""Log entries a read model could not write, set aside so the projection moves on.

One table, ``projection_quarantine`` in PostgreSQL, owned here (DDL, writes, reads). A
row names the projection, the entry's log position and identity, and the sink's reason.
The entry itself is referenced by its position rather than copied: the event store
holds it (encrypted per lead where it carries personal data), so forgetting a lead
leaves no copy here, and ``leadscore projections quarantine retry`` re-reads it from
the log once the cause is fixed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import structlog
from prometheus_client import Counter, Gauge

from projections.log import LogEntry

log = structlog.get_logger(__name__)

DDL = """
CREATE TABLE IF NOT EXISTS projection_quarantine (
    projection text NOT NULL,
    position bigint NOT NULL,
    aggregate_id uuid NOT NULL,
    version bigint NOT NULL,
    kind text NOT NULL,
    org_id text NOT NULL,
    reason text NOT NULL,
    error_type text NOT NULL,
    attempts integer NOT NULL DEFAULT 1,
    quarantined_at timestamptz NOT NULL DEFAULT now(),
    last_attempt_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, position)
)
"""
MAX_REASON = 500

QUARANTINED = Counter(
    "leadscore_projection_quarantined_total",
    "Log entries a projection could not write and set aside (projection_quarantine)",
    ["projection"],
)
QUARANTINE_RELEASED = Counter(
    "leadscore_projection_quarantine_released_total",
    "Quarantined log entries written on a retry and released",
    ["projection"],
)
LAG = Gauge(
    "leadscore_projection_lag_positions",
    "Log positions the projection is behind the head of the event store's log",
    ["projection"],
)
for _name in ("postgres", "redis", "clickhouse"):
    QUARANTINED.labels(_name)
    QUARANTINE_RELEASED.labels(_name)


@dataclass(frozen=True, slots=True)
class Quarantined:
    projection: str
    position: int
    aggregate_id: Any
    version: int
    kind: str
    org_id: str
    reason: str
    error_type: str
    attempts: int
    quarantined_at: datetime
    last_attempt_at: datetime


# asyncpg echoes the refused value ("...sequence: <value> (value out of int32 range)"):
# keep the argument and the why, never the value (it may be personal data).
_ARGUMENT = re.compile(r"^(invalid input for query argument \$\d+).*?(\([^()]*\))?$", re.S)


def describe(exc: BaseException) -> str:
    """The sink's reason: one line, bounded, without the refused value."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    m = _ARGUMENT.match(text)
    if m:
        text = " ".join(x for x in m.groups() if x)
    return text[:MAX_REASON]


async def ensure_schema(pool: asyncpg.Pool) -> None:
    # Only when missing: even CREATE ... IF NOT EXISTS needs CREATE on the schema, which
    # the query API's role (it runs the ClickHouse projection) does not have.
    if await pool.fetchval("SELECT to_regclass('projection_quarantine') IS NULL"):
        await pool.execute(DDL)


async def add(pool: asyncpg.Pool, projection: str, entry: LogEntry, exc: BaseException) -> None:
    """Record ``entry`` as set aside by ``projection`` (then ``alert``, once it is final)."""
    await ensure_schema(pool)
    reason = describe(exc)
    await pool.execute(
        "INSERT INTO projection_quarantine (projection, position, aggregate_id, version, kind, "
        "org_id, reason, error_type) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
        "ON CONFLICT (projection, position) DO UPDATE SET reason = EXCLUDED.reason, "
        "error_type = EXCLUDED.error_type, attempts = projection_quarantine.attempts + 1, "
        "last_attempt_at = now()",
        projection,
        entry.position,
        entry.aggregate_id,
        entry.version,
        entry.kind,
        entry.event.org_id,
        reason,
        type(exc).__name__,
    )


def alert(projection: str, entry: LogEntry, exc: BaseException) -> None:
    """Count the entry set aside and log the line to alert on."""
    QUARANTINED.labels(projection).inc()
    reason = describe(exc)
    # Alert on this event name: a read model is missing an entry until it is retried.
    log.error(
        "projection entry quarantined",
        alert="projection_quarantine",
        projection=projection,
        position=entry.position,
        kind=entry.kind,
        org_id=entry.event.org_id,
        error_type=type(exc).__name__,
        reason=reason,
    )


async def entries(pool: asyncpg.Pool, projection: str | None = None) -> list[Quarantined]:
    if not await pool.fetchval("SELECT to_regclass('projection_quarantine') IS NOT NULL"):
        return []
    rows = await pool.fetch(
        "SELECT * FROM projection_quarantine WHERE $1::text IS NULL OR projection = $1 "
        "ORDER BY projection, position",
        projection,
    )
    return [Quarantined(**dict(r)) for r in rows]


async def forget(pool: asyncpg.Pool, projection: str, position: int) -> None:
    """Undo ``add`` for an entry that will be retried with its batch after all."""
    await pool.execute(
        "DELETE FROM projection_quarantine WHERE projection = $1 AND position = $2 "
        "AND attempts = 1",
        projection,
        position,
    )


async def failed_again(
    pool: asyncpg.Pool, projection: str, position: int, exc: BaseException
) -> None:
    await pool.execute(
        "UPDATE projection_quarantine SET reason = $3, error_type = $4, "
        "attempts = attempts + 1, last_attempt_at = now() "
        "WHERE projection = $1 AND position = $2",
        projection,
        position,
        describe(exc),
        type(exc).__name__,
    )


async def release(pool: asyncpg.Pool, projection: str, position: int) -> None:
    await pool.execute(
        "DELETE FROM projection_quarantine WHERE projection = $1 AND position = $2",
        projection,
        position,
    )
    QUARANTINE_RELEASED.labels(projection).inc()
    log.info("projection entry released from quarantine", projection=projection, position=position)
