"""The query side's view functions: plain SQL and Redis reads, every one filtered by org.

Records and history come from PostgreSQL (projections/postgres.py), current scores
and leaderboards from Redis (projections/redis.py). Both follow the same log, and
each score carries its log position, so when both hold a lead's score the newer wins.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import redis.asyncio as aioredis
import redis.exceptions
import structlog

from projections.postgres import PROFILE_COLUMNS
from query_api import cursor

log = structlog.get_logger(__name__)

_LEAD_COLUMNS = ("lead_id", *PROFILE_COLUMNS, "status", "created_at", "updated_at")
_SELECT = (
    ", ".join(f"l.{c}" for c in _LEAD_COLUMNS)
    + ", s.total, s.fit, s.engagement, s.grade, s.model_version,"
    " s.updated_at AS scored_at, s.position, s.factors::text AS factors"
)
_LEAD_AND_SCORE = (
    f"SELECT {_SELECT} FROM leads l LEFT JOIN lead_scores s ON s.aggregate_id = l.aggregate_id "
    "WHERE l.org_id = $1 AND l.lead_id = $2"
)


class RedisKeys:
    """The Redis read model's key layout (docs/read-models.md), under a configurable prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def lead(self, org: str, lead_id: str) -> str:
        return f"{self.prefix}:{org}:lead:{lead_id}"

    def leaderboard(self, org: str) -> str:
        return f"{self.prefix}:{org}:leaderboard"


def _score_from_row(row: asyncpg.Record) -> dict[str, Any] | None:
    if row["total"] is None:
        return None
    return {
        "score": row["total"],
        "grade": row["grade"],
        "fit": row["fit"],
        "engagement": row["engagement"],
        "model_version": row["model_version"],
        "updated_at": row["scored_at"],
        "position": row["position"],
        # jsonb goes out as PostgreSQL rendered it: no decode and re-encode.
        "factors": orjson.Fragment(row["factors"]),
    }


def _score_from_hash(h: dict[str, str]) -> dict[str, Any] | None:
    try:
        return {
            "score": float(h["score"]),
            "grade": h["grade"],
            "fit": float(h["fit"]),
            "engagement": float(h["engagement"]),
            "model_version": h["model_version"],
            "updated_at": _utc(datetime.fromisoformat(h["updated_at"])),
            "position": int(h["position"]),
            # Hashes written before scores carried factors have none.
            "factors": orjson.Fragment(h.get("factors", "[]")),
        }
    except (KeyError, ValueError):
        # A hash mid-write or from an older layout: the PostgreSQL score stands in.
        return None


def _utc(at: datetime) -> datetime:
    # The schema promises RFC 3339 timestamps, which need an offset.
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _lead(row: asyncpg.Record, org: str, score: dict[str, Any] | None) -> dict[str, Any]:
    return {"org_id": org, **{c: row[c] for c in _LEAD_COLUMNS}, "score": score}


async def lead(
    pool: asyncpg.Pool, r: aioredis.Redis, keys: RedisKeys, org: str, lead_id: str
) -> dict[str, Any] | None:
    """A lead's profile and current score, or None when ``org`` has no such lead."""
    # One after the other, not gathered: under load the API is CPU-bound, and running
    # the two concurrently measured ~1.8x the CPU per request (extra task and wakeups);
    # a miss (unknown or another org's lead) then costs no Redis call at all.
    row = await pool.fetchrow(_LEAD_AND_SCORE, org, lead_id)
    if row is None:
        return None
    try:
        hot = await r.hgetall(keys.lead(org, lead_id))
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        # The record holds every score too: a Redis outage costs freshness, not the answer.
        log.warning("redis unavailable; lead score from postgresql", error=repr(exc))
        hot = {}
    record = _score_from_row(row)
    cached = _score_from_hash(hot) if hot else None
    if cached is None or (record is not None and record["position"] > cached["position"]):
        return _lead(row, org, record)
    return _lead(row, org, cached)


async def score_history(
    pool: asyncpg.Pool, org: str, lead_id: str, before: int | None, limit: int
) -> dict[str, Any] | None:
    """One page of a lead's score changes, newest first; None when ``org`` has no such lead."""
    rows = await pool.fetch(
        "SELECT version, position, score, previous_score, grade, components::text, "
        "factors::text, model_version, caused_by_event_id, at FROM score_history "
        "WHERE org_id = $1 AND lead_id = $2 AND position < $3 "
        "ORDER BY position DESC LIMIT $4",
        org,
        lead_id,
        before if before is not None else 2**63 - 1,
        limit + 1,
    )
    if not rows:
        exists = await pool.fetchval(
            "SELECT 1 FROM leads WHERE org_id = $1 AND lead_id = $2", org, lead_id
        )
        if not exists:
            return None
    page = rows[:limit]
    items = [
        {
            "version": r["version"],
            "position": r["position"],
            "score": r["score"],
            "previous_score": r["previous_score"],
            "grade": r["grade"],
            # jsonb goes out as PostgreSQL rendered it: no decode and re-encode.
            "components": orjson.Fragment(r["components"]),
            "factors": orjson.Fragment(r["factors"]),
            "model_version": r["model_version"],
            "caused_by_event_id": r["caused_by_event_id"],
            "at": r["at"],
        }
        for r in page
    ]
    more = len(rows) > limit
    next_cursor = cursor.encode("history", page[-1]["position"]) if more else None
    return {"lead_id": lead_id, "items": items, "next_cursor": next_cursor}


async def leads(
    pool: asyncpg.Pool,
    org: str,
    *,
    min_score: float | None,
    grade: str | None,
    source: str | None,
    after: tuple[float, str] | None,
    limit: int,
) -> dict[str, Any]:
    """One page of the org's scored leads, by score descending then lead id (keyset)."""
    args: list[Any] = [org]
    where = ["s.org_id = $1"]

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if min_score is not None:
        where.append(f"s.total >= {arg(min_score)}")
    if grade is not None:
        where.append(f"s.grade = {arg(grade)}")
    if source is not None:
        where.append(f"l.source = {arg(source)}")
    if after is not None:
        # Mixed directions (score desc, id asc) rule out a row comparison; the first
        # conjunct still bounds the index range on (org_id, total DESC, lead_id).
        score, last_id = arg(after[0]), arg(after[1])
        where.append(f"s.total <= {score} AND (s.total < {score} OR s.lead_id > {last_id})")
    # Only placeholders are interpolated; each filter combination is its own prepared statement.
    sql = (
        f"SELECT {_SELECT} FROM lead_scores s JOIN leads l ON l.aggregate_id = s.aggregate_id "
        f"WHERE {' AND '.join(where)} ORDER BY s.total DESC, s.lead_id LIMIT {arg(limit + 1)}"
    )
    rows = await pool.fetch(sql, *args)
    page = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        last = page[-1]
        next_cursor = cursor.encode("leads", last["total"], last["lead_id"])
    return {"items": [_lead(r, org, _score_from_row(r)) for r in page], "next_cursor": next_cursor}


# Each lead's score current at $2: the last of its history rows stored by then, a row
# counting from the latest time of it and every row before it (as domain/timeline.py
# reads the event store), so a clock stepping back never reorders a lead's past.
_LEADERBOARD_AS_OF = """
SELECT lead_id, score, grade, at FROM (
    SELECT DISTINCT ON (lead_id) lead_id, score, grade, at FROM (
        SELECT lead_id, version, score, grade, at,
               max(at) OVER (PARTITION BY aggregate_id ORDER BY version) AS reached
        FROM score_history WHERE org_id = $1
    ) h WHERE reached <= $2 ORDER BY lead_id, version DESC
) current ORDER BY score DESC, lead_id LIMIT $3
"""


async def leaderboard_as_of(
    pool: asyncpg.Pool, org: str, at: datetime, limit: int
) -> dict[str, Any]:
    """The org's top leads by their score at ``at``, from the score history."""
    rows = await pool.fetch(_LEADERBOARD_AS_OF, org, at, limit)
    return {
        "items": [
            {"rank": n, "lead_id": r["lead_id"], "score": r["score"], "grade": r["grade"]}
            for n, r in enumerate(rows, start=1)
        ]
    }


# One round trip: the top of the sorted set and each lead's grade. Lead keys are built
# from a prefix argument, as the projection's own script does (single Redis, no cluster).
_LEADERBOARD = """
local top = redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
local out = {}
for i = 1, #top, 2 do
  out[#out + 1] = top[i]
  out[#out + 1] = top[i + 1]
  out[#out + 1] = redis.call('HGET', ARGV[2] .. top[i], 'grade') or false
end
return out
"""


class Leaderboard:
    """The org's top leads by current score, from the Redis sorted set."""

    def __init__(self, r: aioredis.Redis, keys: RedisKeys) -> None:
        self.keys = keys
        self._script = r.register_script(_LEADERBOARD)

    async def top(self, org: str, limit: int) -> dict[str, Any]:
        flat = await self._script(
            keys=[self.keys.leaderboard(org)], args=[limit, self.keys.lead(org, "")]
        )
        return {
            "items": [
                {"rank": n, "lead_id": flat[i], "score": float(flat[i + 1]), "grade": flat[i + 2]}
                for n, i in enumerate(range(0, len(flat), 3), start=1)
            ]
        }
