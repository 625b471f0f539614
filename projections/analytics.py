"""Analytics over the ClickHouse read model, per org, as plain JSON-ready lists and dicts.

Definitions (per lead, all within one org):

- current score and grade: those of the lead's latest ``score_history`` row (by position);
- converted: the lead's latest outcome event (by position) is ``LeadConverted``;
- source: the latest ``source`` any of its events set (None if never set);
- band score (``conversion_by_score_band``): the lead's latest score recorded *before its
  first outcome*, the score sales saw when the lead was decided (its current score while
  it is open); leads with no such score are not counted;
- funnel steps are nested: created → engaged (≥ 1 activity) → high score (scored ≥ 70 at
  any time) → converted; each step counts leads that also passed the steps before it;
- a date range (``Cohort``: ``since`` inclusive, ``until`` exclusive) selects leads by
  their **creation time** (the ``LeadCreated`` event's time; a lead whose creation is not
  in the facts, by its first event): the answers are those of that cohort, counting what
  its leads did at any time. Not by the time of a score or an outcome: a lead created
  before the range and converting inside it would then count as converted but not as
  created, and the funnel's steps would no longer nest nor its rates mean anything.

Rates are ``converted / leads`` (None when there are no leads). The org id is always a
bound query parameter and every table read is filtered by it, so one tenant's query never
reads another's rows.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from clickhouse_connect.driver.client import Client

HIGH_SCORE = 70.0
# A range's bounds are clamped to these (ClickHouse's DateTime64 spans 1900 to 2299), which
# also stand for an open end.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
_OUTCOMES = "('LeadConverted', 'LeadDisqualified')"

# One row per lead of the org, from its non-score events.
_LEAD_FACTS = f"""
SELECT lead_id,
       argMaxIf(source, position, source IS NOT NULL) AS lead_source,
       countIf(kind = 'ActivityRecorded') > 0 AS engaged,
       argMaxIf(kind, position, kind IN {_OUTCOMES}) = 'LeadConverted' AS converted,
       minIfOrNull(position, kind IN {_OUTCOMES}) AS decided_at
FROM lead_events
WHERE org_id = {{org:String}}
GROUP BY lead_id
/*cohort*/
"""

# The lead's creation time: its LeadCreated event's, else its first event's.
_CREATED = "ifNull(minIfOrNull(occurred_at, kind = 'LeadCreated'), min(occurred_at))"
# Replaces /*cohort*/ when a range is asked for: the leads created within it.
_IN_RANGE = (
    f"HAVING {_CREATED} >= {{since:DateTime64(3, 'UTC')}} "
    f"AND {_CREATED} < {{until:DateTime64(3, 'UTC')}}"
)
# Replaces /*cohort_leads*/ in queries of score_history.
_COHORT_LEADS = (
    "AND lead_id IN (SELECT lead_id FROM lead_events WHERE org_id = {org:String} "
    f"GROUP BY lead_id {_IN_RANGE})"
)

# Upper bound kept just below 100 so a perfect score lands in the last bucket.
_BUCKET = "intDiv(toUInt32(floor(least({score}, 99.999))), {{width:UInt32}}) * {{width:UInt32}}"

_DISTRIBUTION = f"""
SELECT {_BUCKET.format(score="latest_score")} AS lo, latest_grade, count() AS leads
FROM (
    SELECT lead_id,
           argMax(score, position) AS latest_score,
           argMax(grade, position) AS latest_grade
    FROM score_history
    WHERE org_id = {{org:String}} /*cohort_leads*/
    GROUP BY lead_id
)
GROUP BY lo, latest_grade
"""

_BY_SOURCE = f"""
SELECT lead_source, count() AS leads, countIf(converted) AS n_converted
FROM ({_LEAD_FACTS})
GROUP BY lead_source
ORDER BY leads DESC, lead_source
"""

_BY_BAND = f"""
SELECT {_BUCKET.format(score="band_score")} AS lo, count() AS leads,
       countIf(lead_converted) AS n_converted
FROM (
    SELECT s.lead_id AS lead_id,
           argMax(s.score, s.position) AS band_score,
           any(f.converted) AS lead_converted
    FROM score_history AS s
    INNER JOIN ({_LEAD_FACTS}) AS f ON s.lead_id = f.lead_id
    WHERE s.org_id = {{org:String}} AND (f.decided_at IS NULL OR s.position < f.decided_at)
    GROUP BY s.lead_id
)
GROUP BY lo
"""

_HIGH_LEADS = """
SELECT lead_id FROM score_history WHERE org_id = {org:String} AND score >= {high:Float64}
"""

_FUNNEL = f"""
SELECT count() AS created,
       countIf(engaged) AS n_engaged,
       countIf(engaged AND high) AS n_high,
       countIf(engaged AND high AND converted) AS n_converted
FROM (
    SELECT lead_id, engaged, converted, lead_id IN ({_HIGH_LEADS}) AS high
    FROM ({_LEAD_FACTS})
)
"""

_CONVERTED_LEADS = f"""
SELECT lead_id FROM lead_events WHERE org_id = {{org:String}}
GROUP BY lead_id
HAVING argMaxIf(kind, position, kind IN {_OUTCOMES}) = 'LeadConverted'
"""

_MODELS = f"""
SELECT model_version,
       count() AS scores,
       uniqExact(lead_id) AS leads,
       avg(score) AS mean_score,
       uniqExactIf(lead_id, score >= {{high:Float64}}) AS high_leads,
       uniqExactIf(lead_id, score >= {{high:Float64}} AND lead_id IN ({_CONVERTED_LEADS}))
           AS high_converted
FROM score_history
WHERE org_id = {{org:String}}
GROUP BY model_version
ORDER BY model_version
"""


@dataclass(frozen=True, slots=True)
class Cohort:
    """Leads created at or after ``since`` and before ``until`` (both UTC-aware; an
    empty range, ``until`` not after ``since``, holds no lead)."""

    since: datetime
    until: datetime

    def __post_init__(self) -> None:
        if self.since.tzinfo is None or self.until.tzinfo is None:
            raise ValueError("a cohort's bounds need a time zone")


def _scoped(sql: str, cohort: Cohort | None, params: dict[str, Any]) -> str:
    """The query for all the org's leads, or for the cohort (its bounds bound, not pasted)."""
    if cohort is None:
        return sql.replace("/*cohort*/", "").replace("/*cohort_leads*/", "")
    params["since"] = min(max(cohort.since, EARLIEST), LATEST)
    params["until"] = min(max(cohort.until, EARLIEST), LATEST)
    return sql.replace("/*cohort*/", _IN_RANGE).replace("/*cohort_leads*/", _COHORT_LEADS)


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _bands(width: int) -> list[int]:
    if not 1 <= width <= 100:
        raise ValueError("bucket width must be between 1 and 100")
    return list(range(0, 100, width))


class Analytics:
    """Org-scoped analytics queries over the client the ClickHouse projection writes with."""

    def __init__(self, client: Client, *, high_score: float = HIGH_SCORE) -> None:
        self.client = client
        self.high_score = high_score

    async def score_distribution(
        self, org_id: str, bucket: int = 10, cohort: Cohort | None = None
    ) -> dict[str, Any]:
        """Current scores of the org's leads in buckets of ``bucket`` points, and by grade."""
        lows = _bands(bucket)
        rows = await self._rows(_DISTRIBUTION, cohort, org=org_id, width=bucket)
        per_bucket = dict.fromkeys(lows, 0)
        per_grade: dict[str, int] = {}
        for lo, grade, n in rows:
            per_bucket[lo] += n
            per_grade[grade] = per_grade.get(grade, 0) + n
        return {
            "org_id": org_id,
            "bucket": bucket,
            "leads": sum(per_bucket.values()),
            "buckets": [
                {"from": lo, "to": min(lo + bucket, 100), "count": per_bucket[lo]} for lo in lows
            ],
            "grades": [{"grade": g, "count": per_grade[g]} for g in sorted(per_grade)],
        }

    async def conversion_by_source(
        self, org_id: str, cohort: Cohort | None = None
    ) -> list[dict[str, Any]]:
        """Per lead source: leads, converted, conversion rate (most leads first)."""
        rows = await self._rows(_BY_SOURCE, cohort, org=org_id)
        return [
            {"source": source, "leads": n, "converted": c, "rate": _rate(c, n)}
            for source, n, c in rows
        ]

    async def conversion_by_score_band(
        self, org_id: str, band: int = 20, cohort: Cohort | None = None
    ) -> list[dict[str, Any]]:
        """Per band of the score before the outcome: leads, converted, rate (every band)."""
        lows = _bands(band)
        rows = await self._rows(_BY_BAND, cohort, org=org_id, width=band)
        found = {lo: (n, c) for lo, n, c in rows}
        out = []
        for lo in lows:
            n, c = found.get(lo, (0, 0))
            out.append(
                {"from": lo, "to": min(lo + band, 100), "leads": n, "converted": c,
                 "rate": _rate(c, n)}
            )  # fmt: skip
        return out

    async def funnel(self, org_id: str, cohort: Cohort | None = None) -> list[dict[str, Any]]:
        """Nested steps created → engaged → high score → converted, with step and overall rates."""
        rows = await self._rows(_FUNNEL, cohort, org=org_id, high=self.high_score)
        counts = rows[0] if rows else (0, 0, 0, 0)
        steps = ("created", "engaged", "high_score", "converted")
        out = []
        for i, (step, n) in enumerate(zip(steps, counts, strict=True)):
            out.append(
                {"step": step, "leads": n,
                 "step_rate": _rate(n, counts[i - 1]) if i else None,
                 "overall_rate": _rate(n, counts[0])}
            )  # fmt: skip
        return out

    async def model_comparison(self, org_id: str) -> list[dict[str, Any]]:
        """Per model version: scores, leads scored, mean score, conversion of leads it put ≥ 70."""
        rows = await self._rows(_MODELS, None, org=org_id, high=self.high_score)
        return [
            {"model_version": version, "scores": scores, "leads": leads,
             "mean_score": mean, "high_leads": high, "high_converted": won,
             "high_conversion_rate": _rate(won, high)}
            for version, scores, leads, mean, high, won in rows
        ]  # fmt: skip

    async def _rows(self, sql: str, cohort: Cohort | None, **params: Any) -> list[tuple[Any, ...]]:
        text = _scoped(sql, cohort, params)

        def run() -> list[tuple[Any, ...]]:
            return [tuple(r) for r in self.client.query(text, parameters=params).result_rows]

        return await asyncio.to_thread(run)
