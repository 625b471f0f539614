"""Why a lead scored what it did: additive factors, phrased for a salesperson.

A score is explained against a reference: a lead of the same age we know nothing about
(no title, company, email or activity). Each feature that differs from the reference is
switched from the reference value to the lead's, one at a time, and the score change at
each switch is that feature's contribution. Switching in one order and in the reverse
order, and averaging the two, is the antithetic two-permutation estimate of the Shapley
value: cheap (2k + 1 model rows for k differing features, one batched model call for
a whole batch of leads) and exactly additive, since each path ends at the lead itself:
the contributions sum to ``score - reference score``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from domain.events import ActivityKind
from domain.features import FEATURE_NAMES, NO_ACTIVITY_DAYS
from domain.featurespec import DEFAULT_SPEC, FeatureSpec
from domain.firmographics import COUNTRIES, DEPARTMENTS, INDUSTRIES, SENIORITY_UNKNOWN, SOURCES

TOP = 3  # positive and negative factors kept with each score
NEGLIGIBLE = 0.05  # points: smaller contributions are not worth a salesperson's time

# The reference lead: unknown on every feature except its age (days_since_created),
# which is kept, so age alone is never "the reason".
_REFERENCE: dict[str, float] = {
    **dict.fromkeys(FEATURE_NAMES, 0.0),
    "seniority": float(SENIORITY_UNKNOWN),
    "days_since_last_activity": NO_ACTIVITY_DAYS,
}
_KEPT = frozenset({"days_since_created"})

_SENIORITY = {
    0: "student or intern",
    1: "junior or unclear title",
    2: "senior individual contributor",
    3: "manager-level title",
    4: "director-level title",
    5: "VP-level title",
    6: "C-level or founder title",
}
_KIND_LABELS = {
    ActivityKind.PAGE_VIEW: ("page view", "page views"),
    ActivityKind.EMAIL_OPEN: ("email opened", "emails opened"),
    ActivityKind.EMAIL_CLICK: ("email click", "email clicks"),
    ActivityKind.FORM_SUBMIT: ("form submitted", "forms submitted"),
    ActivityKind.DEMO_REQUEST: ("demo request", "demo requests"),
    ActivityKind.PRICING_PAGE: ("pricing page visit", "pricing page visits"),
    ActivityKind.WEBINAR: ("webinar attended", "webinars attended"),
    ActivityKind.CONTENT_DOWNLOAD: ("content download", "content downloads"),
    ActivityKind.OTHER: ("other activity", "other activities"),
}


def reference_value(name: str, value: float) -> float:
    """The reference lead's value of builtin feature ``name`` (the lead's own for its age)."""
    return value if name in _KEPT else _REFERENCE[name]


def reference_row(row: Sequence[float], spec: FeatureSpec = DEFAULT_SPEC) -> list[float]:
    """The reference lead's features for a lead whose features are ``row``."""
    return spec.reference(row)


def _differs(a: float, b: float) -> bool:
    return a != b and not (math.isnan(a) and math.isnan(b))


def contributions(
    rows: Sequence[Sequence[float]], predict: Any, spec: FeatureSpec = DEFAULT_SPEC
) -> list[tuple[float, dict[str, float]]]:
    """Per row: the reference score and each differing feature's contribution, in points.

    ``predict`` is a Scorer's predict (probabilities for rows); it is called once.
    ``spec`` is the model's feature spec: it names the row's columns and the reference.
    """
    names = spec.names
    batch: list[list[float]] = []
    plans: list[tuple[int, list[int]]] = []
    for row in rows:
        ref = spec.reference(row)
        changed = [i for i, (a, b) in enumerate(zip(row, ref, strict=True)) if _differs(a, b)]
        plans.append((len(batch), changed))
        batch.append(ref)
        for order in (changed, changed[::-1]):
            current = list(ref)
            for i in order:
                current = list(current)
                current[i] = row[i]
                batch.append(current)
    p = [float(x) for x in predict(batch)] if batch else []
    out = []
    for start, changed in plans:
        k = len(changed)
        base = p[start]
        parts = dict.fromkeys((names[i] for i in changed), 0.0)
        forward = p[start + 1 : start + 1 + k]
        backward = p[start + 1 + k : start + 1 + 2 * k]
        previous = base
        for i, value in zip(changed, forward, strict=True):
            parts[names[i]] += 50.0 * (value - previous)
            previous = value
        previous = base
        for i, value in zip(changed[::-1], backward, strict=True):
            parts[names[i]] += 50.0 * (value - previous)
            previous = value
        out.append((100.0 * base, parts))
    return out


def top_factors(
    row: Sequence[float],
    parts: dict[str, float],
    labels: Mapping[str, str] | None = None,
    spec: FeatureSpec = DEFAULT_SPEC,
) -> list[dict[str, Any]]:
    """The TOP largest positive then TOP largest negative contributions, labelled.

    ``parts`` are features' contributions and, named in ``labels``, any others (rules).
    """
    labels = labels or {}
    index = {name: i for i, name in enumerate(spec.names)}

    def words(name: str) -> str:
        if name in labels:
            return labels[name]
        value = row[index[name]]
        return spec.label(name, value) or label(name, value)

    ranked = sorted(parts.items(), key=lambda kv: kv[1], reverse=True)
    positive = [kv for kv in ranked if kv[1] >= NEGLIGIBLE][:TOP]
    negative = [kv for kv in reversed(ranked) if kv[1] <= -NEGLIGIBLE][:TOP]
    return [
        {
            "feature": name,
            "label": words(name),
            "contribution": round(c, 1),
        }
        for name, c in (*positive, *negative)
    ]


def label(feature: str, value: float) -> str:
    """A feature's value in a salesperson's words."""
    if feature == "seniority":
        return _SENIORITY.get(int(value), "unclear title")
    if feature == "department":
        return f"{_name(DEPARTMENTS, value)} department"
    if feature == "log_employees":
        return f"company of about {_round_people(10**value):,} employees"
    if feature == "industry":
        return f"industry: {_name(INDUSTRIES, value).replace('_', ' ')}"
    if feature == "country":
        return f"country: {_name(COUNTRIES, value)}"
    if feature == "source":
        return f"came from {_name(SOURCES, value).replace('_', ' ')}"
    if feature == "free_mail":
        return "free-mail address" if value else "business email address"
    if feature == "profile_completeness":
        return f"profile {value:.0%} complete"
    if feature == "engagement_decayed":
        return "recent engagement" if value > 0 else "no recent engagement"
    if feature == "days_since_last_activity":
        if value >= NO_ACTIVITY_DAYS:
            return "no activity yet"
        days = math.floor(value)
        return "active today" if days == 0 else f"no activity for {days} days"
    if feature == "days_since_created":
        return f"lead for {math.floor(value)} days"
    if feature.startswith("n_"):
        one, many = _KIND_LABELS[ActivityKind(feature[2:])]
        n = int(value)
        return f"no {many}" if n == 0 else f"1 {one}" if n == 1 else f"{n} {many}"
    return feature


def _name(vocabulary: tuple[str, ...], code: float) -> str:
    i = int(code)
    return vocabulary[i] if 0 <= i < len(vocabulary) else "other"


def _round_people(n: float) -> int:
    if n < 100:
        return max(1, round(n))
    digits = int(math.log10(n)) - 1
    return int(round(n, -digits))
