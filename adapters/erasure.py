"""Forgetting a person (GDPR art. 17): crypto-shredding plus a LeadForgotten event.

``forget_lead`` destroys the lead's data key first (every encrypted copy of its personal
data in events and snapshots is unreadable from then on), then records LeadForgotten on
the lead's stream (ids, reason and time; no personal data), then deletes its shadow
scores. The read models and webhook deliveries follow the log: each blanks or deletes
the lead when the LeadForgotten reaches it, and a rebuild from position 0 finds the
earlier events without their personal data (README, "Privacy").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

import structlog

from adapters import model_registry
from adapters.eventstore import ConcurrentWriteError, LeadStore
from domain.lead import lead_aggregate_id

log = structlog.get_logger(__name__)

WRITE_ATTEMPTS = 5  # a worker writing the same lead meanwhile makes the save conflict


class UnknownLeadError(LookupError):
    """No such lead in the org (another org's lead answers the same)."""


@dataclass(frozen=True, slots=True)
class Forgotten:
    org_id: str
    lead_id: str
    aggregate_id: UUID
    key_destroyed: bool  # False: it was gone already (forgotten before)
    already_forgotten: bool
    shadow_scores_deleted: int

    def as_dict(self) -> dict[str, object]:
        return {
            "org_id": self.org_id,
            "lead_id": self.lead_id,
            "key_destroyed": self.key_destroyed,
            "already_forgotten": self.already_forgotten,
            "shadow_scores_deleted": self.shadow_scores_deleted,
        }


def forget_lead(
    store: LeadStore,
    dsn: str,
    org_id: str,
    lead_id: str,
    reason: str | None = None,
    now: datetime | None = None,
) -> Forgotten:
    """Forget lead ``lead_id`` of ``org_id`` everywhere; idempotent."""
    agg = lead_aggregate_id(org_id, lead_id)
    store.evict([agg])
    if store.load([agg])[agg] is None:
        raise UnknownLeadError(f"no lead {lead_id!r} in org {org_id!r}")
    key_destroyed = store.keys.shred(agg)
    already = True
    for attempt in range(WRITE_ATTEMPTS):
        store.evict([agg])
        lead = store.load([agg])[agg]  # read after the shred: without personal data
        assert lead is not None
        if lead.forgotten:
            break
        already = False
        lead.forget(reason, now or datetime.now(UTC))
        try:
            store.save_leads([lead])
            break
        except ConcurrentWriteError:
            if attempt == WRITE_ATTEMPTS - 1:
                raise
    shadows = model_registry.forget_shadow_scores(dsn, agg)
    # The audit trail names the lead by its aggregate id, never by what it held.
    log.info(
        "audit: lead forgotten",
        audit=True,
        org_id=org_id,
        aggregate_id=str(agg),
        key_destroyed=key_destroyed,
        already_forgotten=already,
    )
    return Forgotten(org_id, lead_id, agg, key_destroyed, already, shadows)
