"""Propose a feature spec from an org's stored history: types, cardinality, coverage.

Reads every lead-event once, keeps counts per field, attribute, activity kind and
activity property, and proposes what a data scientist would start from:

* a field or attribute that nearly always holds a number: ``numeric``;
* one with few distinct values that many leads share: ``categorical``;
* identifiers and personal data (email, names, company, values unique per lead): left
  out, and said why;
* every activity kind a fair share of leads have: counts over all time, 7 and 30 days,
  and days since the last one; numeric activity properties: sum, mean, max and 7/30-day
  sums; a text property with few values (a campaign): its last value as a category.

The proposal is a starting point: review it, then save it as config/features/<org>.yaml.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from domain.events import EventType, LeadEvent
from domain.lead import as_number

MIN_COVERAGE = 0.05  # share of leads that must have a value
MAX_CATEGORIES = 50  # more distinct values than this: not a category
PERSONAL = frozenset({"email", "first_name", "last_name", "company"})
DISTINCT_COUNTED = 500  # distinct values counted per column; more are "over 500"
NUMERIC_SHARE = 0.95  # share of values that must parse as numbers for a numeric field


@dataclass
class _Column:
    leads: set[str] = field(default_factory=set)
    values: Counter[str] = field(default_factory=Counter)
    numeric: int = 0
    total: int = 0

    def add(self, lead: str, value: object) -> None:
        text = str(value)
        self.leads.add(lead)
        self.total += 1
        if isinstance(value, (int, float)) or as_number(text) is not None:
            self.numeric += 1
        if len(self.values) <= DISTINCT_COUNTED or text in self.values:
            self.values[text] += 1


@dataclass(frozen=True)
class Finding:
    """One candidate and what was decided about it, for the report printed beside it."""

    what: str  # e.g. "attribute occupation", "page_view.seconds_on_site"
    coverage: float
    distinct: int
    numeric_share: float
    decision: str


def suggest(events: Iterable[LeadEvent]) -> tuple[dict[str, Any], list[Finding]]:
    """A feature spec document (for yaml.safe_dump) and the findings behind it."""
    fields: dict[str, _Column] = defaultdict(_Column)
    attributes: dict[str, _Column] = defaultdict(_Column)
    kinds: dict[str, set[str]] = defaultdict(set)
    properties: dict[tuple[str, str], _Column] = defaultdict(_Column)
    leads: set[str] = set()
    for ev in events:
        lead = ev.lead_id
        leads.add(lead)
        if ev.event_type in (EventType.LEAD_CREATED, EventType.LEAD_UPDATED):
            for name, value in ev.profile.items():
                if value not in (None, ""):
                    fields[name].add(lead, value)
            for name, value in ev.attributes.items():
                if value != "":
                    attributes[name].add(lead, value)
        elif ev.event_type is EventType.ACTIVITY_RECORDED and ev.activity_kind is not None:
            kind = str(ev.activity_kind)
            kinds[kind].add(lead)
            for name, value in ev.activity_properties.items():
                properties[(kind, name)].add(lead, value)
    n = max(1, len(leads))
    findings: list[Finding] = []
    doc: dict[str, Any] = {"version": 1, "builtin": [], "fields": [], "activities": []}

    def profile_like(source: str, name: str, col: _Column) -> None:
        coverage = len(col.leads) / n
        share = col.numeric / col.total if col.total else 0.0
        distinct = len(col.values)
        if source == "field" and name in PERSONAL:
            decision = "left out: personal data, not a signal"
        elif coverage < MIN_COVERAGE:
            decision = f"left out: on {coverage:.0%} of leads"
        elif share >= NUMERIC_SHARE:
            decision = "numeric"
            doc["fields"].append({source: name, "type": "numeric"})
        elif distinct <= MAX_CATEGORIES:
            decision = f"categorical ({distinct} values)"
            doc["fields"].append({source: name, "type": "categorical"})
        elif distinct > 0.5 * len(col.leads):
            decision = "left out: nearly unique per lead (an identifier or free text)"
        else:
            decision = f"categorical, the {MAX_CATEGORIES} most frequent values ({distinct} seen)"
            doc["fields"].append(
                {source: name, "type": "categorical", "max_categories": MAX_CATEGORIES}
            )
        label = name if source == "field" else f"attribute {name}"
        findings.append(Finding(label, round(coverage, 3), distinct, round(share, 3), decision))

    for name, col in sorted(fields.items()):
        profile_like("field", name, col)
    for name, col in sorted(attributes.items()):
        profile_like("attribute", name, col)
    for kind, who in sorted(kinds.items()):
        coverage = len(who) / n
        if coverage < MIN_COVERAGE:
            findings.append(Finding(kind, round(coverage, 3), 0, 1.0, "left out: rare"))
            continue
        doc["activities"].append({"kind": kind, "count": ["all", 7, 30], "days_since_last": True})
        findings.append(Finding(kind, round(coverage, 3), 0, 1.0, "counts, days since last"))
        for (k, prop), col in sorted(properties.items()):
            if k != kind:
                continue
            share = col.numeric / col.total if col.total else 0.0
            p_cov = len(col.leads) / n
            what = f"{kind}.{prop}"
            if p_cov < MIN_COVERAGE:
                decision = f"left out: on {p_cov:.0%} of leads"
            elif share >= NUMERIC_SHARE:
                decision = "sum, mean, max, 7/30-day sums"
                doc["activities"].append(
                    {
                        "kind": kind,
                        "property": prop,
                        "stats": ["sum", "mean", "max"],
                        "windows": [7, 30],
                    }
                )
            elif len(col.values) <= MAX_CATEGORIES:
                decision = f"last value, categorical ({len(col.values)} values)"
                doc["activities"].append({"kind": kind, "property": prop, "type": "categorical"})
            else:
                decision = "left out: free text (URLs, ids)"
            findings.append(
                Finding(what, round(p_cov, 3), len(col.values), round(share, 3), decision)
            )
    # Lead age is the one builtin that is always meaningful; the others assume B2B titles.
    doc["builtin"] = ["days_since_created", "days_since_last_activity", "engagement_decayed"]
    return {k: v for k, v in doc.items() if v}, findings
