"""How a lead's score is made: the model (through a port), components and grade."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from domain.events import PROFILE_FIELDS
from domain.featurespec import DEFAULT_SPEC, FeatureSpec
from domain.firmographics import is_free_mail, seniority
from domain.lead import Lead


class Scorer(Protocol):
    """Port to a conversion model. Adapters: ONNX runtime in production, fakes in tests.

    A scorer may also have ``spec``, the FeatureSpec its rows are made with (learned
    vocabularies included); one without is read with the default spec (``spec_of``).
    """

    version: str
    feature_names: tuple[str, ...]

    def predict(self, rows: Sequence[Sequence[float]]) -> Sequence[float]:
        """Conversion probability in [0, 1] for each row, in order."""
        ...


# The model for an org: per-org models where an org has one, the global model otherwise.
ScorerFor = Callable[[str], Scorer]


def route(scorer: Scorer | ScorerFor) -> ScorerFor:
    """One model for every org, or already a choice per org."""
    if hasattr(scorer, "predict"):
        one: Scorer = scorer  # type: ignore[assignment]
        return lambda _org: one
    return scorer  # type: ignore[return-value]


@runtime_checkable
class Models(Protocol):
    """Which model scores an org, and which shadow model scores beside it (if any)."""

    @property
    def global_model(self) -> Scorer: ...

    def __call__(self, org_id: str) -> Scorer: ...

    def shadow(self, org_id: str) -> Scorer | None: ...

    def refresh(self, force: bool = False) -> None:
        """Pick up changed assignments (a promotion); called between batches."""
        ...


class OneModel:
    """One model for every org and no shadow (tests, a replay with a candidate)."""

    def __init__(self, scorer: Scorer) -> None:
        check_model(scorer)
        self.global_model = scorer

    def __call__(self, org_id: str) -> Scorer:
        return self.global_model

    def shadow(self, org_id: str) -> Scorer | None:
        return None

    def refresh(self, force: bool = False) -> None:
        return None


@dataclass(frozen=True, slots=True)
class ScoreCard:
    total: float
    fit: float
    engagement: float
    grade: str
    model_version: str
    probability: float | None = None  # the model's, unrounded (rules move its log-odds)

    @property
    def components(self) -> dict[str, float]:
        return {"fit": self.fit, "engagement": self.engagement}


class ModelMismatchError(ValueError):
    """The model was trained on other features than the domain computes."""


def fit_component(lead: Lead) -> float:
    """Who the lead is, 0-100: seniority, company size, a business address, a full profile."""
    p = lead.profile
    employees = p.get("employees")
    size = (
        min(math.log10(employees) / 4.0, 1.0)
        if isinstance(employees, int) and employees > 0
        else 0.0
    )
    filled = sum(1 for f in PROFILE_FIELDS if p.get(f) not in (None, ""))
    raw = (
        40.0 * seniority(p.get("title")) / 6.0
        + 30.0 * size
        + 15.0 * filled / len(PROFILE_FIELDS)
        + (0.0 if is_free_mail(p.get("email")) else 15.0)
    )
    return round(max(0.0, min(100.0, raw)), 1)


def engagement_component(lead: Lead, now: datetime) -> float:
    """What the lead did, 0-100, decayed by age: a quiet lead's engagement falls."""
    total = sum(lead.engagement_at(now).values())
    return round(100.0 * (1.0 - math.exp(-total / 20.0)), 1)


def grade(fit: float, engagement: float) -> str:
    """Place a lead on the fit x engagement matrix: A-C (fit) and 1-3 (engagement)."""
    letter = "A" if fit >= 60 else "B" if fit >= 35 else "C"
    digit = "1" if engagement >= 60 else "2" if engagement >= 25 else "3"
    return letter + digit


def spec_of(scorer: Scorer) -> FeatureSpec:
    """The feature spec a scorer reads: its own, or the default (the builtin features)."""
    spec = getattr(scorer, "spec", None)
    return spec if isinstance(spec, FeatureSpec) else DEFAULT_SPEC


def check_model(scorer: Scorer) -> None:
    names = spec_of(scorer).names
    if tuple(scorer.feature_names) != names:
        raise ModelMismatchError(
            f"model {scorer.version} expects features {scorer.feature_names}, "
            f"its feature spec computes {names}"
        )


def score_leads(
    leads: Sequence[Lead],
    now: Sequence[datetime],
    scorer: Scorer,
    rows: Sequence[Sequence[float]] | None = None,
) -> list[ScoreCard]:
    """Score many leads with one model call; ``now[i]`` is the clock for ``leads[i]``.

    ``rows`` are the leads' features as of ``now`` when the caller has them already.
    """
    if not leads:
        return []
    if rows is None:
        spec = spec_of(scorer)
        rows = [spec.row(lead, at) for lead, at in zip(leads, now, strict=True)]
    probabilities = scorer.predict(rows)
    cards = []
    for lead, at, p in zip(leads, now, probabilities, strict=True):
        fit = fit_component(lead)
        eng = engagement_component(lead, at)
        cards.append(
            ScoreCard(
                total=round(100.0 * float(p), 1),
                fit=fit,
                engagement=eng,
                grade=grade(fit, eng),
                model_version=scorer.version,
                probability=float(p),
            )
        )
    return cards


# A score moving less than this keeps the previous explanation (same grade and model).
EXPLAIN_MIN_CHANGE = 5.0


def needs_explanation(lead: Lead, card: ScoreCard) -> bool:
    """Explain first scores, grade or model changes and material moves; not every wiggle."""
    return (
        lead.score is None
        or not lead.factors
        or card.grade != lead.grade
        or card.model_version != lead.model_version
        or abs(card.total - lead.score) >= EXPLAIN_MIN_CHANGE
    )


def is_change(lead: Lead, card: ScoreCard) -> bool:
    """Only a changed score (or grade, or model) becomes a LeadScored event."""
    return (
        lead.score is None
        or card.total != lead.score
        or card.grade != lead.grade
        or card.model_version != lead.model_version
    )
