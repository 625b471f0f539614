"""Small builders of domain lead-events for tests."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from adapters.settings import ROOT
from domain.events import ActivityKind, EventType, LeadEvent
from domain.features import FEATURE_NAMES

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
MODEL_DIR = ROOT / "models" / "onnx"  # the committed models (v1, ...)
_ids = itertools.count(1)


def next_id() -> str:
    return f"evt-{next(_ids):08d}"


def created(
    lead: str = "lead-1", org: str = "org-1", at: datetime = T0, **profile: object
) -> LeadEvent:
    profile = profile or {
        "email": "ada@example.io",
        "first_name": "Ada",
        "title": "VP of Engineering",
        "company": "Example",
        "employees": 800,
        "industry": "software",
        "country": "GB",
        "source": "referral",
    }
    return LeadEvent(next_id(), EventType.LEAD_CREATED, org, lead, at, dict(profile))  # type: ignore[arg-type]


def activity(
    kind: ActivityKind = ActivityKind.PAGE_VIEW,
    lead: str = "lead-1",
    org: str = "org-1",
    at: datetime = T0,
) -> LeadEvent:
    return LeadEvent(
        next_id(),
        EventType.ACTIVITY_RECORDED,
        org,
        lead,
        at,
        activity_kind=kind,
        activity_properties={"url": "/pricing"},
    )


def outcome(
    kind: EventType = EventType.LEAD_CONVERTED,
    lead: str = "lead-1",
    org: str = "org-1",
    at: datetime = T0 + timedelta(days=10),
) -> LeadEvent:
    return LeadEvent(next_id(), kind, org, lead, at, reason="closed won")


class FixedScorer:
    """A scorer port fake: probability from the number of demo requests, deterministic."""

    version = "test-1"
    feature_names = FEATURE_NAMES

    def predict(self, rows: Sequence[Sequence[float]]) -> list[float]:
        demo = FEATURE_NAMES.index("n_demo_request")
        return [min(0.99, 0.1 + 0.2 * row[demo]) for row in rows]
