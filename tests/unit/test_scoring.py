from datetime import timedelta

import pytest

from domain.events import ActivityKind
from domain.lead import Lead
from domain.processing import apply_batch, event_time
from domain.scoring import (
    ModelMismatchError,
    check_model,
    engagement_component,
    grade,
    score_leads,
)
from tests.support.factories import T0, FixedScorer, activity, created


def test_grade_matrix() -> None:
    assert grade(80, 80) == "A1"
    assert grade(40, 30) == "B2"
    assert grade(10, 5) == "C3"


def test_scores_come_from_the_model_in_one_call() -> None:
    calls: list[int] = []

    class Counting(FixedScorer):
        def predict(self, rows):  # type: ignore[no-untyped-def]
            calls.append(len(rows))
            return super().predict(rows)

    leads = [Lead.open(created(lead=f"l{i}")) for i in range(5)]
    leads[0].handle(activity(ActivityKind.DEMO_REQUEST, lead="l0"))
    cards = score_leads(leads, [T0] * 5, Counting())
    assert calls == [5]
    assert cards[0].total == 30.0 and cards[1].total == 10.0
    assert all(c.model_version == "test-1" for c in cards)


def test_engagement_component_falls_with_silence() -> None:
    lead = Lead.open(created())
    lead.handle(activity(ActivityKind.WEBINAR))
    assert engagement_component(lead, T0 + timedelta(days=30)) < engagement_component(lead, T0)


def test_model_with_other_features_is_refused() -> None:
    class Other(FixedScorer):
        feature_names = ("a", "b")

    with pytest.raises(ModelMismatchError):
        check_model(Other())


def test_batch_applies_each_event_once_and_scores_each_lead_once() -> None:
    c1, c2 = created(lead="a"), created(lead="b")
    demo = activity(ActivityKind.DEMO_REQUEST, lead="a")
    out = apply_batch([c1, c2, demo, demo], {}, FixedScorer(), event_time, T0)
    assert (out.applied, out.duplicates, out.scored) == (3, 1, 2)
    a = next(lead for lead in out.touched.values() if lead.lead_id == "a")
    scored = [e for e in a.collect_events() if type(e).__name__ == "LeadScored"]
    assert len(scored) == 1
    assert scored[0].caused_by_event_id == demo.event_id
    assert scored[0].score == 30.0


def test_unchanged_score_records_no_event() -> None:
    out = apply_batch([created(lead="a")], {}, FixedScorer(), event_time, T0)
    lead = next(iter(out.touched.values()))
    lead.collect_events()
    again = apply_batch(
        [activity(ActivityKind.OTHER, lead="a")], {lead.id: lead}, FixedScorer(), event_time, T0
    )
    # The activity is applied, but a page of "other" leaves score and grade unchanged.
    assert again.applied == 1
    assert again.scored == 0
