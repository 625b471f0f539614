"""Explanations: additive, ranked, phrased; explained only when the score moved materially."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import timedelta

from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from domain.events import ActivityKind
from domain.explain import NEGLIGIBLE, TOP, contributions, label, reference_row, top_factors
from domain.features import FEATURE_NAMES, features
from domain.lead import Lead
from domain.processing import apply_batch, event_time
from domain.scoring import EXPLAIN_MIN_CHANGE
from tests.support.factories import T0, activity, created
from tests.support.models import V1


class Interacting:
    """A non-additive fake model: interactions, saturation, a threshold."""

    version = "fake-interacting"
    feature_names = FEATURE_NAMES

    def predict(self, rows: Sequence[Sequence[float]]) -> list[float]:
        out = []
        for r in rows:
            z = 0.4 * r[0] * r[2] - 0.01 * r[-2] + 0.8 * min(r[12], 3.0) + (1.5 if r[6] else 0.0)
            z += 0.3 * r[8] * r[7] - 2.0
            out.append(1.0 / (1.0 + math.exp(-z)))
        return out


counts = st.integers(min_value=0, max_value=6)
rows = st.builds(
    lambda sen, dep, emp, ind, cty, src, free, comp, kinds, since, age: [
        float(sen), float(dep), emp, float(ind), float(cty), float(src), float(free), comp,
        *(float(k) for k in kinds), float(sum(kinds)) * 0.7, since, age,
    ],  # fmt: skip
    st.integers(0, 6), st.integers(0, 6), st.floats(0, 5), st.integers(0, 9),
    st.integers(0, 11), st.integers(0, 8), st.integers(0, 1), st.floats(0, 1),
    st.lists(counts, min_size=9, max_size=9), st.floats(0, 365), st.floats(0, 400),
)  # fmt: skip


@hsettings(max_examples=200, deadline=None)
@given(st.lists(rows, min_size=1, max_size=8))
def test_contributions_add_up_to_score_minus_reference(batch: list[list[float]]) -> None:
    for model in (Interacting(), V1):
        explained = contributions(batch, model.predict)
        scores = [100.0 * float(p) for p in model.predict(batch)]
        for row, score, (reference, parts) in zip(batch, scores, explained, strict=True):
            assert math.isclose(sum(parts.values()), score - reference, abs_tol=1e-6)
            expected = 100.0 * float(model.predict([reference_row(row)])[0])
            assert math.isclose(reference, expected, abs_tol=1e-9)


@hsettings(max_examples=100, deadline=None)
@given(rows)
def test_features_equal_to_the_reference_get_no_share(row: list[float]) -> None:
    reference = reference_row(row)
    ((_ref, parts),) = contributions([row], Interacting().predict)
    same = {FEATURE_NAMES[i] for i, (a, b) in enumerate(zip(row, reference, strict=True)) if a == b}
    assert same.isdisjoint(parts)
    assert "days_since_created" not in parts  # age alone is never the reason


@given(st.dictionaries(st.sampled_from(FEATURE_NAMES), st.floats(-30, 30), max_size=20))
def test_top_factors_keep_the_largest_three_each_way(parts: dict[str, float]) -> None:
    row = [1.0] * len(FEATURE_NAMES)
    factors = top_factors(row, parts)
    positive = [f["contribution"] for f in factors if f["contribution"] > 0]
    negative = [f["contribution"] for f in factors if f["contribution"] < 0]
    assert len(positive) <= TOP and len(negative) <= TOP
    assert positive == sorted(positive, reverse=True) and negative == sorted(negative)
    strong = sorted((v for v in parts.values() if v >= NEGLIGIBLE), reverse=True)[:TOP]
    assert positive == [round(v, 1) for v in strong]
    assert all(isinstance(f["label"], str) and f["label"] for f in factors)


def test_labels_read_like_a_salesperson_wrote_them() -> None:
    assert label("seniority", 5.0) == "VP-level title"
    assert label("days_since_last_activity", 30.4) == "no activity for 30 days"
    assert label("n_demo_request", 2.0) == "2 demo requests"
    assert label("n_webinar", 1.0) == "1 webinar attended"
    assert label("free_mail", 1.0) == "free-mail address"
    assert label("log_employees", math.log10(800)) == "company of about 800 employees"


def test_a_vp_requesting_demos_is_explained_by_the_model_in_those_words() -> None:
    lead = Lead.open(created(title="VP of Sales", email="v@bigco.com", employees=2_000))
    for n in range(3):
        lead.handle(activity(ActivityKind.DEMO_REQUEST, at=T0 + timedelta(hours=n + 1)))
    row = features(lead, event_time(lead))
    ((_reference, parts),) = contributions([row], V1.predict)
    factors = top_factors(row, parts)
    positive = [f["label"] for f in factors if f["contribution"] > 0]
    assert "3 demo requests" in positive, factors


def test_only_material_changes_are_explained_again() -> None:
    first = created(title="VP of Sales", email="v@bigco.com")
    lead = Lead.open(first)
    outcome = apply_batch([], {lead.id: lead}, V1, event_time, T0)
    assert outcome.scored == 0  # nothing applied, nothing scored
    outcome = apply_batch(
        [activity(ActivityKind.PAGE_VIEW, at=T0 + timedelta(minutes=1))],
        {lead.id: lead},
        V1,
        event_time,
        T0,
    )
    assert outcome.scored == 1 and lead.factors  # first score: explained
    explained = lead.factors
    before, grade = lead.score, lead.grade
    assert before is not None
    apply_batch(
        [activity(ActivityKind.PAGE_VIEW, at=T0 + timedelta(minutes=2))],
        {lead.id: lead},
        V1,
        event_time,
        T0,
    )
    small = abs((lead.score or 0.0) - before) < EXPLAIN_MIN_CHANGE and lead.grade == grade
    if small:
        assert lead.factors is explained  # a wiggle keeps the explanation
    else:
        assert lead.factors is not explained
