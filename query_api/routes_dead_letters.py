"""The org's dead letters by reason over time, from the dead-letter log (PostgreSQL).

The API does not read Kafka: the worker logs each dead letter (no payload) as it
produces it (adapters/dead_letter_log.py). Letters whose org could not be decoded, or
is not a registered one, belong to no org and are shown to none.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from adapters import dead_letter_log
from query_api.auth import org_of
from query_api.errors import InvalidParametersError
from query_api.params import Choice, Instant, Query, Range, query
from query_api.responses import JSON
from query_api.routes_leads import resources

DEFAULT_SPAN = timedelta(days=7)
# Enough for the log's retention, and a bounded answer (buckets × reasons).
MAX_SPAN = {"hour": timedelta(days=31), "day": timedelta(days=400)}

SINCE = Instant("from", "Dead letters at or after this instant (default: 7 days before `until`).")
UNTIL = Instant(
    "until", "Dead letters before this instant (default: now; may be ahead).", future=True
)
BUCKET = Choice("bucket", "Count per hour or per day (UTC); day by default.", ("day", "hour"))


def window(
    since: datetime | None, until: datetime | None, bucket: str
) -> tuple[datetime, datetime]:
    """The half-open range asked for, defaulted; 422 when longer than the bucket allows."""
    end = until or datetime.now(UTC)
    start = since or end - DEFAULT_SPAN
    if end - start > MAX_SPAN[bucket]:
        raise InvalidParametersError(
            [
                {
                    "parameter": "from",
                    "in": "query",
                    "message": f"the range may span at most {MAX_SPAN[bucket].days} days "
                    f"with bucket={bucket}",
                }
            ]
        )
    return start, end


@query(SINCE, UNTIL, BUCKET, ranges=(Range(SINCE, UNTIL),))
async def dead_letters(request: Request, q: Query) -> Response:
    bucket = q[BUCKET] or "day"
    since, until = window(q[SINCE], q[UNTIL], bucket)
    if since >= until:  # a default end before an explicit start
        raise InvalidParametersError(
            [{"parameter": "from", "in": "query", "message": "must be before until"}]
        )
    org = org_of(request)
    return JSON(await dead_letter_log.counts(resources(request).pool, org, since, until, bucket))


routes = [Route("/dead-letters", dead_letters, methods=["GET"])]
