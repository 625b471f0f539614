"""Everything the engine holds about one lead, as JSON (the right of access, GDPR art. 15).

Read from the event store's log (decrypted with the lead's key, when it still has one)
and the read model's scores: the profile and custom attributes as they stand, every
stored event of the lead with its data, and its score with the factors behind it.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any
from uuid import UUID

import asyncpg

from domain.events import PII_FIELDS
from projections.log import LogReader

HEAD = 2**62  # every position


async def lead_export(
    pool: asyncpg.Pool, org_id: str, lead_id: str, aggregate_id: UUID
) -> dict[str, Any] | None:
    """The lead's export, or None when the org holds no such lead."""
    entries = await LogReader(pool).of_aggregate(aggregate_id, HEAD)
    entries = [e for e in entries if e.event.org_id == org_id and e.event.lead_id == lead_id]
    if not entries:
        return None
    profile: dict[str, Any] = {}
    attributes: dict[str, Any] = {}
    forgotten = None
    events = []
    score = None
    for e in entries:
        ev = e.event
        if e.kind == "LeadCreated":
            profile.update(ev.profile)
            attributes.update(getattr(ev, "attributes", None) or {})
        elif e.kind == "LeadUpdated":
            profile.update(ev.changes)
            attributes.update(getattr(ev, "attributes", None) or {})
        elif e.kind == "LeadForgotten":
            forgotten = {"at": ev.occurred_at.isoformat(), "reason": ev.reason}
            profile = {k: v for k, v in profile.items() if k not in PII_FIELDS}
            attributes = {}
        elif e.kind == "LeadScored":
            score = {
                "score": ev.score,
                "grade": ev.grade,
                "components": ev.components,
                "model_version": ev.model_version,
                "factors": ev.factors,
                "at": ev.scored_at.isoformat(),
            }
        data = {
            k: _plain(v)
            for k, v in vars(ev).items()
            if k not in ("originator_id", "originator_version", "org_id", "lead_id")
        }
        events.append({"position": e.position, "version": e.version, "kind": e.kind, **data})
    return {
        "org_id": org_id,
        "lead_id": lead_id,
        "forgotten": forgotten,
        "profile": profile,
        "attributes": attributes,
        "score": score,
        "events": events,
    }


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
