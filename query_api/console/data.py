"""The console's own reads: plain SQL over the read models, every one filtered by org."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

STATUSES = ("open", "converted", "disqualified")
ACTIVE_WITHIN_DAYS = (1, 7, 30, 90)
PAGE_SIZE = 25


@dataclass(frozen=True)
class BoardFilters:
    grade: str | None = None
    status: str | None = None
    min_score: float | None = None
    source: str | None = None
    active_days: int | None = None
    search: str | None = None
    page: int = 1


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def board(pool: asyncpg.Pool, org: str, f: BoardFilters) -> dict[str, Any]:
    """One page of the org's scored leads, ranked by current score, filtered."""
    args: list[Any] = [org]

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    where = ["s.org_id = $1"]
    if f.grade:
        where.append(f"s.grade = {arg(f.grade)}")
    if f.status:
        where.append(f"l.status = {arg(f.status)}")
    if f.min_score is not None:
        where.append(f"s.total >= {arg(f.min_score)}")
    if f.source:
        where.append(f"l.source = {arg(f.source)}")
    if f.active_days:
        where.append(f"l.updated_at >= now() - make_interval(days => {arg(f.active_days)})")
    if f.search:
        p = arg(_like(f.search))
        where.append(
            f"(l.email ILIKE {p} OR l.company ILIKE {p} OR l.lead_id ILIKE {p} "
            f"OR concat_ws(' ', l.first_name, l.last_name) ILIKE {p})"
        )
    offset = (f.page - 1) * PAGE_SIZE
    rows = await pool.fetch(
        "SELECT l.lead_id, l.first_name, l.last_name, l.email, l.company, l.source, l.status, "
        "l.updated_at, s.total, s.grade, s.fit, s.engagement "
        "FROM lead_scores s JOIN leads l ON l.aggregate_id = s.aggregate_id "
        f"WHERE {' AND '.join(where)} ORDER BY s.total DESC, s.lead_id "
        f"LIMIT {arg(PAGE_SIZE + 1)} OFFSET {arg(offset)}",
        *args,
    )
    items = [dict(r) | {"rank": offset + i} for i, r in enumerate(rows[:PAGE_SIZE], start=1)]
    return {"items": items, "more": len(rows) > PAGE_SIZE, "page": f.page}


async def sources(pool: asyncpg.Pool, org: str) -> list[str]:
    rows = await pool.fetch(
        "SELECT DISTINCT source FROM leads WHERE org_id = $1 AND source IS NOT NULL "
        "ORDER BY source LIMIT 50",
        org,
    )
    return [r["source"] for r in rows]


async def moved_today(pool: asyncpg.Pool, org: str, limit: int = 10) -> list[dict[str, Any]]:
    """The leads whose score moved most since midnight UTC (score history), either way."""
    rows = await pool.fetch(
        "SELECT lead_id, "
        "(array_agg(score ORDER BY version DESC))[1] AS score, "
        "(array_agg(coalesce(previous_score, 0) ORDER BY version))[1] AS since, "
        "count(*) AS changes "
        "FROM score_history WHERE org_id = $1 AND at >= date_trunc('day', now()) "
        "GROUP BY lead_id ORDER BY abs((array_agg(score ORDER BY version DESC))[1] "
        "- (array_agg(coalesce(previous_score, 0) ORDER BY version))[1]) DESC, lead_id "
        "LIMIT $2",
        org,
        limit,
    )
    return [dict(r) | {"change": r["score"] - r["since"]} for r in rows]


async def lead(pool: asyncpg.Pool, org: str, lead_id: str) -> dict[str, Any] | None:
    row = await pool.fetchrow(
        "SELECT l.*, s.total, s.grade, s.fit, s.engagement, s.model_version, "
        "s.updated_at AS scored_at, s.factors::text AS factors "
        "FROM leads l LEFT JOIN lead_scores s ON s.aggregate_id = l.aggregate_id "
        "WHERE l.org_id = $1 AND l.lead_id = $2",
        org,
        lead_id,
    )
    if row is None:
        return None
    out = dict(row)
    out["factors"] = orjson.loads(row["factors"]) if row["factors"] else []
    return out


async def projection_lag(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    """Each projection's position against the head of the event store's log."""
    head = await pool.fetchval(
        "SELECT CASE WHEN to_regclass('leads_events') IS NULL THEN 0 "
        "ELSE (SELECT coalesce(max(notification_id), 0) FROM leads_events) END"
    )
    rows = await pool.fetch(
        "SELECT name, position, updated_at FROM projection_status ORDER BY name"
    )
    return [dict(r) | {"head": head, "lag": max(0, head - r["position"])} for r in rows]


async def deliveries(pool: asyncpg.Pool, org: str, limit: int = 50) -> list[dict[str, Any]]:
    if not await pool.fetchval("SELECT to_regclass('webhook_deliveries') IS NOT NULL"):
        return []
    rows = await pool.fetch(
        "SELECT d.id, w.url, d.event_type, d.status, d.attempts, d.last_status, d.last_error, "
        "d.created_at, d.delivered_at FROM webhook_deliveries d "
        "JOIN webhooks w ON w.id = d.webhook_id WHERE d.org_id = $1 "
        "ORDER BY d.id DESC LIMIT $2",
        org,
        limit,
    )
    return [dict(r) for r in rows]


async def shadow_agreement(pool: asyncpg.Pool, org: str, version: str) -> dict[str, Any]:
    """How a shadow model's scores of the org's leads compare with the active model's."""
    if not await pool.fetchval("SELECT to_regclass('shadow_scores') IS NOT NULL"):
        return {"leads": 0}
    row = await pool.fetchrow(
        "SELECT count(*) AS leads, avg(abs(active_score - shadow_score)) AS mean_abs_diff, "
        "avg((abs(active_score - shadow_score) <= 5)::int) AS within_5_points, "
        "corr(active_score, shadow_score) AS correlation "
        "FROM shadow_scores WHERE shadow_version = $1 AND org_id = $2",
        version,
        org,
    )
    return dict(row)
