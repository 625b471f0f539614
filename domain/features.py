"""Features of a lead: a pure function of its state and a clock."""

from __future__ import annotations

import math
from datetime import datetime

from domain.events import PROFILE_FIELDS, ActivityKind
from domain.firmographics import (
    COUNTRIES,
    INDUSTRIES,
    SOURCES,
    code_of,
    department,
    is_free_mail,
    seniority,
)
from domain.lead import Lead

COUNTED_KINDS: tuple[str, ...] = tuple(str(k) for k in ActivityKind)
NO_ACTIVITY_DAYS = 365.0

FEATURE_NAMES: tuple[str, ...] = (
    "seniority",
    "department",
    "log_employees",
    "industry",
    "country",
    "source",
    "free_mail",
    "profile_completeness",
    *(f"n_{kind}" for kind in COUNTED_KINDS),
    "engagement_decayed",
    "days_since_last_activity",
    "days_since_created",
)


def features(lead: Lead, now: datetime) -> list[float]:
    """The model's input row for ``lead`` as of ``now``, in FEATURE_NAMES order."""
    p = lead.profile
    employees = p.get("employees")
    log_employees = math.log10(employees) if isinstance(employees, int) and employees > 0 else 0.0
    filled = sum(1 for f in PROFILE_FIELDS if p.get(f) not in (None, ""))
    engagement = lead.engagement_at(now)
    if lead.last_activity_at is None:
        since_last = NO_ACTIVITY_DAYS
    else:
        since_last = min(NO_ACTIVITY_DAYS, max(0.0, _days(now - lead.last_activity_at)))
    return [
        float(seniority(p.get("title"))),
        float(department(p.get("title"))),
        log_employees,
        float(code_of(p.get("industry"), INDUSTRIES)),
        float(code_of(p.get("country"), COUNTRIES)),
        float(code_of(p.get("source"), SOURCES)),
        1.0 if is_free_mail(p.get("email")) else 0.0,
        filled / len(PROFILE_FIELDS),
        *(float(lead.activity_counts.get(kind, 0)) for kind in COUNTED_KINDS),
        float(sum(engagement.values())),
        since_last,
        max(0.0, _days(now - lead.created_at)),
    ]


def _days(delta: object) -> float:
    return delta.total_seconds() / 86_400.0  # type: ignore[attr-defined]
