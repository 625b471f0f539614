"""The PostgreSQL read model: the record of leads, their current scores and score history.

Rows and the projection's position are written in one transaction; entries at or
below the stored position are skipped, so a redelivered batch changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from adapters import positions
from adapters.eventstore import DDL_LOCK
from adapters.positions import TRACKING_DDL
from domain.events import PII_FIELDS
from projections import changes
from projections.log import LogEntry, LogReader

# What PostgreSQL (or asyncpg, encoding a value) refuses about the rows themselves: bad
# text (NUL, encoding), out-of-range numbers, constraint violations; and Python's own
# errors building the rows from an entry. Connection errors are none of these.
DATA_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    TypeError,
    ValueError,
    KeyError,
    OverflowError,
)

POSITION_NAME = "projection:postgres"
PROFILE_COLUMNS = (
    "email", "first_name", "last_name", "company", "title", "industry", "employees",
    "country", "source",
)  # fmt: skip

DDL = f"""
{TRACKING_DDL};
CREATE TABLE IF NOT EXISTS leads (
    aggregate_id uuid PRIMARY KEY,
    org_id text NOT NULL,
    lead_id text NOT NULL,
    email text, first_name text, last_name text, company text, title text,
    industry text, employees integer, country text, source text,
    status text NOT NULL DEFAULT 'open',
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    UNIQUE (org_id, lead_id)
);
CREATE TABLE IF NOT EXISTS lead_scores (
    aggregate_id uuid PRIMARY KEY,
    org_id text NOT NULL,
    lead_id text NOT NULL,
    total double precision NOT NULL,
    fit double precision NOT NULL,
    engagement double precision NOT NULL,
    grade text NOT NULL,
    model_version text NOT NULL,
    updated_at timestamptz NOT NULL,
    position bigint NOT NULL,
    factors jsonb NOT NULL DEFAULT '[]',
    stage text
);
-- Read models made before scores carried their explanation, or their stage (a rebuild
-- fills it: `leadscore projections rebuild postgres`).
ALTER TABLE lead_scores ADD COLUMN IF NOT EXISTS factors jsonb NOT NULL DEFAULT '[]';
ALTER TABLE lead_scores ADD COLUMN IF NOT EXISTS stage text;
CREATE INDEX IF NOT EXISTS lead_scores_org_total_idx
    ON lead_scores (org_id, total DESC, lead_id);
CREATE TABLE IF NOT EXISTS score_history (
    aggregate_id uuid NOT NULL,
    version bigint NOT NULL,
    org_id text NOT NULL,
    lead_id text NOT NULL,
    score double precision NOT NULL,
    previous_score double precision,
    components jsonb NOT NULL,
    factors jsonb NOT NULL,
    grade text NOT NULL,
    model_version text NOT NULL,
    caused_by_event_id text NOT NULL,
    at timestamptz NOT NULL,
    position bigint NOT NULL,
    PRIMARY KEY (aggregate_id, version)
);
CREATE INDEX IF NOT EXISTS score_history_org_lead_pos_idx
    ON score_history (org_id, lead_id, position DESC);
"""

# Each batch goes in as one statement per table: the rows as column arrays, unnest()ed
# server-side (one plan, one execution) rather than one execution per row. A batch holds
# one row per lead and per (lead, version), folded in memory first (``_rows``), so no
# statement touches a row twice. The rows' column order is below; the arrays' element
# types are the columns' own, read from the catalog (so an operator who widens a column,
# as a quarantine's fix may, sees it at the next start or `projections quarantine retry`).
_COLUMNS = {
    "leads": (
        "aggregate_id", "org_id", "lead_id", *PROFILE_COLUMNS, "status", "created_at",
        "updated_at",
    ),
    "lead_scores": (
        "aggregate_id", "org_id", "lead_id", "total", "fit", "engagement", "grade",
        "model_version", "updated_at", "position", "factors", "stage",
    ),
    "score_history": (
        "aggregate_id", "version", "org_id", "lead_id", "score", "previous_score",
        "components", "factors", "grade", "model_version", "caused_by_event_id", "at",
        "position",
    ),
}  # fmt: skip

_ON_LEAD = f"""
ON CONFLICT (aggregate_id) DO UPDATE SET
    {", ".join(f"{c} = EXCLUDED.{c}" for c in PROFILE_COLUMNS)},
    status = EXCLUDED.status,
    created_at = EXCLUDED.created_at,
    updated_at = EXCLUDED.updated_at
"""
_ON_SCORE = """
ON CONFLICT (aggregate_id) DO UPDATE SET
    total = EXCLUDED.total, fit = EXCLUDED.fit, engagement = EXCLUDED.engagement,
    grade = EXCLUDED.grade, model_version = EXCLUDED.model_version,
    updated_at = EXCLUDED.updated_at, position = EXCLUDED.position,
    factors = EXCLUDED.factors, stage = EXCLUDED.stage
WHERE lead_scores.position < EXCLUDED.position
"""
_ON_HISTORY = """
ON CONFLICT (aggregate_id, version) DO NOTHING
"""
_CATALOG_TYPES = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
WHERE c.oid = ANY(ARRAY[to_regclass('leads'), to_regclass('lead_scores'),
                        to_regclass('score_history')])
  AND a.attnum > 0 AND NOT a.attisdropped
"""


def _insert_unnest(table: str, types: Sequence[tuple[str, str]]) -> str:
    """``INSERT INTO table (cols) SELECT ... FROM unnest($1::t1[], ...)``; jsonb columns
    travel as text arrays (the rows hold JSON text) and are cast per element."""
    columns = ", ".join(name for name, _ in types)
    arrays = ", ".join(
        f"${i}::{'text' if t == 'jsonb' else t}[]" for i, (_, t) in enumerate(types, 1)
    )
    select = ", ".join(f"{name}::jsonb" if t == "jsonb" else name for name, t in types)
    return f"INSERT INTO {table} ({columns})\nSELECT {select} FROM unnest({arrays}) AS r({columns})"


@dataclass(frozen=True)
class _Statements:
    upsert_lead: str
    upsert_score: str
    insert_history: str

    @classmethod
    def typed(cls, found: dict[str, dict[str, str]]) -> _Statements:
        """The three statements, each column typed as the catalog (``found``) says."""

        def types(table: str) -> list[tuple[str, str]]:
            have = found.get(table, {})
            missing = [name for name in _COLUMNS[table] if name not in have]
            if missing:
                raise RuntimeError(
                    f"read model table {table} lacks {', '.join(missing)}: "
                    "the projection's setup has not run on this database"
                )
            return [(name, have[name]) for name in _COLUMNS[table]]

        return cls(
            _insert_unnest("leads", types("leads")) + _ON_LEAD,
            _insert_unnest("lead_scores", types("lead_scores")) + _ON_SCORE,
            _insert_unnest("score_history", types("score_history")) + _ON_HISTORY,
        )

    @classmethod
    async def read(cls, conn: asyncpg.Connection) -> _Statements:
        found: dict[str, dict[str, str]] = {}
        for table, column, kind in await conn.fetch(_CATALOG_TYPES):
            found.setdefault(table, {})[column] = kind
        return cls.typed(found)


async def _write(conn: asyncpg.Connection, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """Write ``rows`` (tuples in the statement's column order) in one statement."""
    if rows:
        await conn.execute(sql, *(list(column) for column in zip(*rows, strict=True)))


class PostgresProjection:
    name = "postgres"

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._sql: _Statements | None = None  # typed from the catalog by setup

    async def setup(self) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            # Same lock as the event store's DDL: workers start together.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", DDL_LOCK)
            await conn.execute(DDL)
            self._sql = await _Statements.read(conn)

    async def _statements(self, conn: asyncpg.Connection) -> _Statements:
        """The statements typed at setup; read from the catalog if setup has not run in
        this process (the tables another process set up)."""
        if self._sql is None:
            self._sql = await _Statements.read(conn)
        return self._sql

    async def position(self) -> int:
        return await positions.aposition(self.pool, POSITION_NAME)

    async def reset(self) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("DROP TABLE IF EXISTS score_history, lead_scores, leads")
            await positions.aforget(conn, POSITION_NAME)
            await conn.execute("SELECT pg_notify($1, $2)", changes.PG_CHANNEL, changes.FLUSH)

    async def close(self) -> None:
        """The pool belongs to the caller."""

    def is_data_error(self, exc: BaseException) -> bool:
        return isinstance(exc, DATA_ERRORS)

    async def advance(self, position: int) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await positions.aset(conn, POSITION_NAME, position)

    async def reapply(self, entries: Sequence[LogEntry]) -> None:
        """Scores and history go in guarded by position; a lead's row is folded afresh from
        all its entries up to the recorded position, so an old entry never overwrites a
        newer change."""
        reader = LogReader(self.pool)
        async with self.pool.acquire() as conn, conn.transaction():
            upto = await positions.aclaim(conn, POSITION_NAME)
            upto = max(upto, max(e.position for e in entries))
            sql = await self._statements(conn)
            for agg in dict.fromkeys(e.aggregate_id for e in entries if e.kind != "LeadScored"):
                history = [
                    e for e in await reader.of_aggregate(agg, upto) if e.kind != "LeadScored"
                ]
                await conn.execute("DELETE FROM leads WHERE aggregate_id = $1", agg)
                leads, _scores, _history = await self._rows(conn, history)
                await _write(conn, sql.upsert_lead, leads)
            _leads, scores, history = await self._rows(
                conn, [e for e in entries if e.kind == "LeadScored"]
            )
            await _write(conn, sql.upsert_score, scores)
            await _write(conn, sql.insert_history, history)
            touched = dict.fromkeys((e.event.org_id, e.event.lead_id) for e in entries)
            for payload in changes.encode(touched):
                await conn.execute("SELECT pg_notify($1, $2)", changes.PG_CHANNEL, payload)

    async def project(self, entries: Sequence[LogEntry]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            # Lock our position row: two writers of this read model serialise here.
            current = await positions.aclaim(conn, POSITION_NAME)
            fresh = [e for e in entries if e.position > current]
            if not fresh:
                return
            sql = await self._statements(conn)
            leads, scores, history = await self._rows(conn, fresh)
            await _write(conn, sql.upsert_lead, leads)
            await _write(conn, sql.upsert_score, scores)
            await _write(conn, sql.insert_history, history)
            await positions.aset(conn, POSITION_NAME, fresh[-1].position)
            # Delivered on commit, never for a rolled-back batch: caches evict these leads.
            touched = dict.fromkeys((e.event.org_id, e.event.lead_id) for e in fresh)
            for payload in changes.encode(touched):
                await conn.execute("SELECT pg_notify($1, $2)", changes.PG_CHANNEL, payload)

    async def _rows(
        self, conn: asyncpg.Connection, entries: Sequence[LogEntry]
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Fold the batch in memory: one lead row per touched lead (from its stored row
        and the batch's changes), one score row per lead (its newest, by position) and one
        history row per (lead, version)."""
        touched = {e.aggregate_id for e in entries if e.kind != "LeadScored"}
        state: dict[Any, dict[str, Any]] = {}
        if touched:
            rows = await conn.fetch(
                "SELECT * FROM leads WHERE aggregate_id = ANY($1::uuid[])", list(touched)
            )
            state = {r["aggregate_id"]: dict(r) for r in rows}
        newest: dict[Any, LogEntry] = {}  # per lead, its newest score
        versions: dict[tuple[Any, int], LogEntry] = {}  # per (lead, version)
        for e in entries:
            ev = e.event
            if e.kind == "LeadScored":
                versions[(e.aggregate_id, e.version)] = e
                seen = newest.get(e.aggregate_id)
                if seen is None or e.position > seen.position:
                    newest[e.aggregate_id] = e
                continue
            lead = state.get(e.aggregate_id)
            if lead is None:
                lead = state[e.aggregate_id] = {
                    "aggregate_id": e.aggregate_id,
                    "org_id": ev.org_id,
                    "lead_id": ev.lead_id,
                    **dict.fromkeys(PROFILE_COLUMNS),
                    "status": "open",
                    "created_at": getattr(ev, "created_at", None) or ev.occurred_at,
                    "updated_at": getattr(ev, "created_at", None) or ev.occurred_at,
                }
            _fold(lead, e)
        lead_rows = [
            (
                lead["aggregate_id"],
                lead["org_id"],
                lead["lead_id"],
                *(lead[c] for c in PROFILE_COLUMNS),
                lead["status"],
                lead["created_at"],
                lead["updated_at"],
            )  # fmt: skip
            for agg, lead in state.items()
            if agg in touched
        ]
        return (
            lead_rows,
            [_score_row(e) for e in newest.values()],
            [_history_row(e) for e in versions.values()],
        )


def _fold(lead: dict[str, Any], e: LogEntry) -> None:
    ev = e.event
    if e.kind == "LeadCreated":
        lead.update({k: v for k, v in ev.profile.items() if k in PROFILE_COLUMNS})
        lead["created_at"] = ev.created_at
        at = ev.created_at
    elif e.kind == "LeadUpdated":
        lead.update({k: v for k, v in ev.changes.items() if k in PROFILE_COLUMNS})
        at = ev.occurred_at
    elif e.kind == "LeadConverted":
        lead["status"] = "converted"
        at = ev.occurred_at
    elif e.kind == "LeadDisqualified":
        lead["status"] = "disqualified"
        at = ev.occurred_at
    elif e.kind == "LeadForgotten":  # the person's data leaves the row; scores stay
        lead.update(dict.fromkeys(c for c in PROFILE_COLUMNS if c in PII_FIELDS))
        at = ev.occurred_at
    else:
        at = ev.occurred_at
    if lead["updated_at"] is None or at > lead["updated_at"]:
        lead["updated_at"] = at


def _score_row(e: LogEntry) -> tuple[Any, ...]:
    ev = e.event
    return (
        e.aggregate_id, ev.org_id, ev.lead_id, ev.score, ev.components["fit"],
        ev.components["engagement"], ev.grade, ev.model_version, ev.scored_at, e.position,
        orjson.dumps(ev.factors).decode(), getattr(ev, "stage", None),
    )  # fmt: skip


def _history_row(e: LogEntry) -> tuple[Any, ...]:
    ev = e.event
    return (
        e.aggregate_id, e.version, ev.org_id, ev.lead_id, ev.score, ev.previous_score,
        orjson.dumps(ev.components).decode(), orjson.dumps(ev.factors).decode(), ev.grade,
        ev.model_version, ev.caused_by_event_id, ev.scored_at, e.position,
    )  # fmt: skip
