"""Lead-events as the domain receives them, after decoding and validation."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class EventType(StrEnum):
    LEAD_CREATED = "LeadCreated"
    LEAD_UPDATED = "LeadUpdated"
    ACTIVITY_RECORDED = "ActivityRecorded"
    LEAD_CONVERTED = "LeadConverted"
    LEAD_DISQUALIFIED = "LeadDisqualified"


class ActivityKind(StrEnum):
    PAGE_VIEW = "page_view"
    EMAIL_OPEN = "email_open"
    EMAIL_CLICK = "email_click"
    FORM_SUBMIT = "form_submit"
    DEMO_REQUEST = "demo_request"
    PRICING_PAGE = "pricing_page"
    WEBINAR = "webinar"
    CONTENT_DOWNLOAD = "content_download"
    OTHER = "other"


# An org id is a tenant's name in keys and URLs: no separators (":" would make Redis
# keys ambiguous across tenants), so one pattern holds at ingest and in `orgs create`.
ORG_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

PROFILE_FIELDS: tuple[str, ...] = (
    "email",
    "first_name",
    "last_name",
    "company",
    "title",
    "industry",
    "employees",
    "country",
    "source",
)

# Profile fields that name or identify a person: encrypted with the lead's own key in the
# event store, and dropped once the lead is forgotten. The org's custom attributes are
# treated as personal data too (they are whatever a CRM holds). The rest of the profile
# (industry, size, country, source) describes the company or the channel.
PII_FIELDS: frozenset[str] = frozenset({"email", "first_name", "last_name", "company", "title"})


@dataclass(frozen=True, slots=True)
class LeadEvent:
    """One upstream lead-event. ``profile`` holds only the fields the event set;
    ``attributes`` the org's own profile fields (CRM custom fields, form answers) it set,
    on LeadCreated and LeadUpdated (lead_event v3)."""

    event_id: str
    event_type: EventType
    org_id: str
    lead_id: str
    occurred_at: datetime
    profile: dict[str, str | int] = field(default_factory=dict)
    activity_kind: ActivityKind | None = None
    activity_properties: dict[str, str] = field(default_factory=dict)
    reason: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
