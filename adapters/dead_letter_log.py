"""The dead-letter log: when, why and for which org each lead-event was dead-lettered.

One row per dead letter, written by ``streams/dlq.py``'s sink in the same call that
produces the letters (one statement for all of a batch's letters), and read by the API
and the console (counts by reason over time), which may not read Kafka. The table lives
here, below both: query_api/ cannot import streams/.

A row holds no payload and no personal data: the org (None when the letter's org could
not be decoded, or is not a registered one: such rows are shown to no org), the reason,
the error's class name, the time, and the source topic, partition and offset that
``leadscore dlq show`` finds the letter by. Not the detail, which may quote a field.

Bounded: rows older than ``RETENTION`` go, and beyond ``MAX_ROWS`` the oldest go, pruned
in the writing transaction at most once per ``PRUNE_EVERY_S`` per writer. One row per
source message: a redelivered batch, or a replayed letter that fails again (it keeps its
first source), is not counted twice.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import psycopg

TABLE = "dead_letter_log"
RETENTION = timedelta(days=30)
MAX_ROWS = 1_000_000
PRUNE_EVERY_S = 60.0
BUCKETS = ("hour", "day")

DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id bigserial PRIMARY KEY,
    org_id text,
    reason text NOT NULL,
    error_class text NOT NULL,
    failed_at timestamptz NOT NULL,
    source_topic text NOT NULL,
    source_partition int NOT NULL,
    source_offset bigint NOT NULL,
    UNIQUE (source_topic, source_partition, source_offset)
);
CREATE INDEX IF NOT EXISTS {TABLE}_org_at_idx ON {TABLE} (org_id, failed_at);
CREATE INDEX IF NOT EXISTS {TABLE}_at_idx ON {TABLE} (failed_at);
"""
_INSERT = f"""
INSERT INTO {TABLE} (org_id, reason, error_class, failed_at, source_topic, source_partition,
                     source_offset)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::text[],
                     %s::int[], %s::bigint[])
ON CONFLICT (source_topic, source_partition, source_offset) DO NOTHING
"""
_PRUNE_OLD = f"DELETE FROM {TABLE} WHERE failed_at < now() - %s::interval"
_PRUNE_MANY = f"""
DELETE FROM {TABLE} WHERE id <= (SELECT id FROM {TABLE} ORDER BY id DESC OFFSET %s LIMIT 1)
"""


@dataclass(frozen=True, slots=True)
class Entry:
    org_id: str | None
    reason: str
    error_class: str
    failed_at: datetime
    source_topic: str
    source_partition: int
    source_offset: int


class DeadLetterLog:
    """The writer: one connection kept open (dead letters come in bursts), reopened after
    an error; not thread-safe (each sink has its own)."""

    def __init__(
        self,
        dsn: str,
        *,
        retention: timedelta = RETENTION,
        max_rows: int = MAX_ROWS,
        prune_every_s: float = PRUNE_EVERY_S,
    ) -> None:
        self.dsn = dsn
        self.retention = retention
        self.max_rows = max_rows
        self.prune_every_s = prune_every_s
        self._conn: psycopg.Connection[Any] | None = None
        self._pruned_at = -float("inf")

    def record(self, entries: Sequence[Entry]) -> None:
        """All of a batch's entries in one statement (and a prune, when due), one commit."""
        if not entries:
            return
        columns = list(zip(*(_row(e) for e in entries), strict=True))
        try:
            conn = self._connect()
            with conn.transaction():
                conn.execute(_INSERT, [list(c) for c in columns])
                if time.monotonic() - self._pruned_at >= self.prune_every_s:
                    self._prune(conn)
        except psycopg.Error:
            self.close()
            raise

    def _prune(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(_PRUNE_OLD, (self.retention,))
        conn.execute(_PRUNE_MANY, (self.max_rows,))
        self._pruned_at = time.monotonic()

    def _connect(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(self.dsn, autocommit=True)
            ensure_schema_sync(conn)
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _row(e: Entry) -> tuple[Any, ...]:
    return (
        e.org_id,
        e.reason,
        e.error_class[:200],
        e.failed_at,
        e.source_topic,
        e.source_partition,
        e.source_offset,
    )


def ensure_schema_sync(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        # Same lock as every owner's DDL: workers and the API start together.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (TABLE,))
        conn.execute(DDL)


async def ensure_schema(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", TABLE)
        await conn.execute(DDL)


async def counts(
    pool: asyncpg.Pool, org: str, since: datetime, until: datetime, bucket: str
) -> dict[str, Any]:
    """The org's dead letters in [since, until): per reason, and per reason and bucket
    (``hour`` or ``day``, UTC; only buckets with letters). Rows without an org are no
    org's: they are never counted here."""
    if bucket not in BUCKETS:
        raise ValueError(f"bucket must be one of {BUCKETS}")
    if not await pool.fetchval("SELECT to_regclass($1) IS NOT NULL", TABLE):
        rows: list[asyncpg.Record] = []
    else:
        rows = await pool.fetch(
            f"SELECT date_trunc($4, failed_at, 'UTC') AS at, reason, count(*) AS n "
            f"FROM {TABLE} WHERE org_id = $1 AND failed_at >= $2 AND failed_at < $3 "
            "GROUP BY 1, 2 ORDER BY 1, 2",
            org,
            since,
            until,
            bucket,
        )
    totals: dict[str, int] = {}
    for r in rows:
        totals[r["reason"]] = totals.get(r["reason"], 0) + r["n"]
    return {
        "org_id": org,
        "from": since,
        "until": until,
        "bucket": bucket,
        "total": sum(totals.values()),
        "reasons": [
            {"reason": reason, "count": n}
            for reason, n in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
        "items": [{"at": r["at"], "reason": r["reason"], "count": r["n"]} for r in rows],
    }
