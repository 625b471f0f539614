"""Per-org business rules on top of the model: adjustments, caps, requirements, disqualifiers.

A scoring configuration (config/scoring/*.yaml, docs in README "Scoring rules") is parsed
into ``ScoringRules``; ``apply`` combines it with the model's score, in this order:

1. **Adjustments**: every matching rule adds its points to its group; a group's sum is
   clamped to ``[-cap, +cap]`` when the group has a cap. The points move the model's
   log-odds, not its score: the total is ``100 * sigmoid(logit(p) + points / 25)``, where
   ``p`` is the model's probability. A rule's points are what it adds to a lead scored
   50; nearer 0 or 100 the same rule changes the odds by the same factor and moves the
   score less, so the order of the model's best leads is kept (adding points and
   clamping at 100 made an org's ten best leads all 100.0). Without rules the score is
   the model's calibrated probability in percent.
2. **Required fields**: if any is missing, the total is at most ``required_cap``.
3. **Disqualifiers win**: a competitor or listed email domain, a free-mail address (when
   enabled) or a matching title sets the total to 0, whatever came before.

Then the **stage** (``stage_of``): ``disqualified`` when a disqualifier matched, else
``sql``/``mql`` when the final total reaches the org's thresholds, else ``lead``; no
thresholds and no disqualifier: no stage at all.

Each step that moves the total is reported as a factor with the points it moved, so a
score's factors (model and rules) still add up to the score minus the reference score.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import re2

from domain.events import PROFILE_FIELDS, ActivityKind
from domain.firmographics import is_free_mail
from domain.lead import Lead
from domain.scoring import ScoreCard

POINTS_PER_LOGIT = 25.0  # the slope of 100 * sigmoid at 50: a rule's points there


def with_points(score: float, points: float) -> float:
    """A 0-100 score moved by rule ``points`` in log-odds (see the module docstring)."""
    if points == 0 or not 0.0 < score < 100.0:
        return score  # a certain score stays certain: no odds to change
    p = score / 100.0
    if not 0.0 < p < 1.0:
        return score  # too close to certain for a float's log-odds
    z = math.log(p) - math.log1p(-p) + points / POINTS_PER_LOGIT
    if z >= 0:  # the two halves of the logistic function keep exp() from overflowing
        return 100.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return 100.0 * e / (1.0 + e)


class RulesError(ValueError):
    """A scoring configuration that cannot be used, with where and why."""


@dataclass(frozen=True)
class Adjustment:
    name: str
    points: float
    group: str
    field: str | None = None  # a profile field matched by ``pattern``
    pattern: Any = None  # a compiled RE2 pattern (``_regex``)
    activity: str | None = None  # or an activity kind seen at least ``at_least`` times
    at_least: int = 1

    def matches(self, lead: Lead) -> bool:
        if self.activity is not None:
            return lead.activity_counts.get(self.activity, 0) >= self.at_least
        value = lead.profile.get(self.field or "")
        return value is not None and self.pattern is not None and _search(self.pattern, value)


@dataclass(frozen=True)
class ScoringRules:
    version: str = "none"
    adjustments: tuple[Adjustment, ...] = ()
    caps: Mapping[str, float] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    required_cap: float = 30.0
    blocked_domains: frozenset[str] = frozenset()
    block_free_mail: bool = False
    blocked_titles: tuple[Any, ...] = ()  # compiled RE2 patterns
    mql: float | None = None  # marketing-qualified from this score
    sql: float | None = None  # sales-qualified from this score


NO_RULES = ScoringRules()


@dataclass(frozen=True)
class RuleEffect:
    """What the rules did to one score: the adjusted card and each step's points."""

    card: ScoreCard
    parts: dict[str, float]  # factor name -> points moved
    labels: dict[str, str]  # factor name -> words for a salesperson
    disqualified: str | None = None  # why, when a disqualifier matched


def apply(rules: ScoringRules, lead: Lead, card: ScoreCard) -> RuleEffect:
    if rules is NO_RULES:
        return RuleEffect(card, {}, {})
    parts: dict[str, float] = {}
    labels: dict[str, str] = {}
    groups: dict[str, list[Adjustment]] = {}
    for rule in rules.adjustments:
        if rule.matches(lead):
            groups.setdefault(rule.group, []).append(rule)
    shares: dict[str, float] = {}
    for group, matched in groups.items():
        raw = sum(r.points for r in matched)
        cap = rules.caps.get(group)
        allowed = raw if cap is None else max(-cap, min(cap, raw))
        # Share a capped group's points among its rules in proportion to their points.
        for r in matched:
            shares[f"rule:{r.name}"] = allowed * r.points / raw if raw else 0.0
            labels[f"rule:{r.name}"] = r.name
    model_score = 100.0 * card.probability if card.probability is not None else card.total
    total = with_points(model_score, sum(shares.values()))
    moved = sum(shares.values())
    for name, share in shares.items():
        # Each rule's factor: its share of what the rules moved the score (sums exactly).
        parts[name] = (total - card.total) * share / moved if moved else 0.0
    missing = [f for f in rules.required if lead.profile.get(f) in (None, "")]
    if missing and total > rules.required_cap:
        parts["rule:required"] = rules.required_cap - total
        labels["rule:required"] = "missing " + ", ".join(missing)
        total = rules.required_cap
    reason = disqualified(rules, lead)
    if reason is not None and total > 0:
        parts["rule:disqualified"] = -total
        labels["rule:disqualified"] = f"disqualified: {reason}"
        total = 0.0
    return RuleEffect(replace(card, total=round(total, 1)), parts, labels, reason)


STAGES = ("lead", "mql", "sql", "disqualified")  # what stage_of can answer, bottom up


def stage_of(rules: ScoringRules, effect: RuleEffect) -> str | None:
    """Where the final score places the lead: disqualified, sql, mql, lead (or None)."""
    if effect.disqualified is not None:
        return "disqualified"
    total = effect.card.total
    if rules.sql is not None and total >= rules.sql:
        return "sql"
    if rules.mql is not None and total >= rules.mql:
        return "mql"
    return None if rules.mql is None and rules.sql is None else "lead"


def disqualified(rules: ScoringRules, lead: Lead) -> str | None:
    email = str(lead.profile.get("email") or "")
    domain = email.rpartition("@")[2].lower()
    if domain and domain in rules.blocked_domains:
        return f"{domain} is on the blocked list"
    if rules.block_free_mail and email and is_free_mail(email):
        return "free-mail address"
    title = str(lead.profile.get("title") or "")
    for pattern in rules.blocked_titles:
        if _search(pattern, title):
            return f"title matches {pattern.pattern!r}"
    return None


# -- parsing ---------------------------------------------------------------------------

_KINDS = frozenset(str(k) for k in ActivityKind)


def parse(doc: Any, source: str = "config") -> ScoringRules:
    """Validate a loaded YAML/JSON document; RulesError names the first problem."""
    if not isinstance(doc, dict):
        raise RulesError(f"{source}: expected a mapping at the top level")
    unknown = set(doc) - {"version", "adjustments", "caps", "required", "disqualify", "thresholds"}
    if unknown:
        raise RulesError(f"{source}: unknown keys {sorted(unknown)}")
    version = doc.get("version")
    if not isinstance(version, (str, int)) or isinstance(version, bool):
        raise RulesError(f"{source}: 'version' (a string or number) is required")
    adjustments = tuple(
        _adjustment(a, f"{source}: adjustments[{i}]")
        for i, a in enumerate(_list(doc.get("adjustments", []), f"{source}: adjustments"))
    )
    caps = doc.get("caps", {})
    if not isinstance(caps, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in caps.values()
    ):
        raise RulesError(f"{source}: 'caps' maps group names to non-negative points")
    required = tuple(_list(doc.get("required", []), f"{source}: required"))
    bad = [f for f in required if f not in PROFILE_FIELDS]
    if bad:
        raise RulesError(f"{source}: required fields {bad} are not profile fields")
    dq = doc.get("disqualify", {})
    if not isinstance(dq, dict) or set(dq) - {"email_domains", "free_mail", "titles"}:
        raise RulesError(f"{source}: 'disqualify' takes email_domains, free_mail, titles")
    mql, sql = _thresholds(doc.get("thresholds", {}), source)
    return ScoringRules(
        version=str(version),
        mql=mql,
        sql=sql,
        adjustments=adjustments,
        caps={str(k): float(v) for k, v in caps.items()},
        required=required,
        blocked_domains=frozenset(
            str(d).lower() for d in _list(dq.get("email_domains", []), f"{source}: domains")
        ),
        block_free_mail=bool(dq.get("free_mail", False)),
        blocked_titles=tuple(
            _regex(t, f"{source}: titles") for t in _list(dq.get("titles", []), source)
        ),
    )


def _thresholds(doc: Any, source: str) -> tuple[float | None, float | None]:
    if not isinstance(doc, dict) or set(doc) - {"mql", "sql"}:
        raise RulesError(f"{source}: 'thresholds' takes mql and sql (scores 0-100)")
    values: list[float | None] = []
    for name in ("mql", "sql"):
        v = doc.get(name)
        if v is not None and (
            not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v <= 100
        ):
            raise RulesError(f"{source}: thresholds.{name} must be a score in (0, 100]")
        values.append(None if v is None else float(v))
    mql, sql = values
    if mql is not None and sql is not None and sql < mql:
        raise RulesError(f"{source}: thresholds.sql ({sql:g}) is below thresholds.mql ({mql:g})")
    return mql, sql


def _adjustment(a: Any, where: str) -> Adjustment:
    if not isinstance(a, dict):
        raise RulesError(f"{where}: expected a mapping")
    name, points = a.get("name"), a.get("points")
    if not isinstance(name, str) or not name:
        raise RulesError(f"{where}: 'name' is required")
    if not isinstance(points, (int, float)) or isinstance(points, bool):
        raise RulesError(f"{where}: 'points' must be a number")
    group = str(a.get("group", name))
    if "activity" in a:
        kind = a["activity"]
        if kind not in _KINDS:
            raise RulesError(f"{where}: unknown activity {kind!r}; known: {sorted(_KINDS)}")
        at_least = a.get("at_least", 1)
        if not isinstance(at_least, int) or at_least < 1:
            raise RulesError(f"{where}: 'at_least' must be a positive integer")
        return Adjustment(name, float(points), group, activity=kind, at_least=at_least)
    fld = a.get("field")
    if fld not in PROFILE_FIELDS:
        raise RulesError(f"{where}: needs 'activity', or 'field' (one of {PROFILE_FIELDS})")
    return Adjustment(
        name, float(points), group, field=fld, pattern=_regex(a.get("matches"), where)
    )


# Rule patterns run on what upstream sends, on the worker's only store thread: RE2 matches
# in time linear in the input (no catastrophic backtracking; it refuses backreferences
# and lookarounds), and what it reads is capped.
MAX_MATCHED = 1_000  # characters of a field a pattern reads (validation's string limit)
_OPTIONS = re2.Options()
_OPTIONS.case_sensitive = False
_OPTIONS.log_errors = False


def _search(pattern: Any, value: object) -> bool:
    return pattern.search(str(value)[:MAX_MATCHED]) is not None


def _regex(value: Any, where: str) -> Any:
    if not isinstance(value, str) or not value:
        raise RulesError(f"{where}: a regular expression is required")
    try:
        return re2.compile(value, _OPTIONS)
    except re2.error as exc:
        raise RulesError(
            f"{where}: invalid regular expression {value!r} (RE2 syntax: no backreferences "
            f"or lookarounds): {exc}"
        ) from None


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise RulesError(f"{where}: expected a list")
    return value
