"""Time passing: a quiet lead's score falls, and only changed scores are recorded."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from domain.events import ActivityKind
from domain.lead import Lead
from domain.processing import apply_batch, event_time, rescore
from domain.scoring import engagement_component
from tests.support.factories import T0, activity, created
from tests.support.models import V1


def engaged_lead(kinds: list[ActivityKind]) -> Lead:
    lead = Lead.open(created(title="Head of IT", email="h@bigco.io", employees=400))
    events = [activity(k, at=T0 + timedelta(hours=i + 1)) for i, k in enumerate(kinds)]
    apply_batch(events, {lead.id: lead}, V1, event_time, T0)
    return lead


kinds = st.lists(st.sampled_from(list(ActivityKind)), min_size=1, max_size=12)


@hsettings(max_examples=50, deadline=None)
@given(kinds, st.integers(1, 200), st.integers(1, 200))
def test_engagement_only_falls_as_activity_ages(
    activity_kinds: list[ActivityKind], d1: int, d2: int
) -> None:
    lead = engaged_lead(activity_kinds)
    last = lead.last_event_at
    early, late = sorted((d1, d2))
    assert engagement_component(lead, last + timedelta(days=early)) >= engagement_component(
        lead, last + timedelta(days=late)
    )


def test_a_quiet_lead_is_rescored_lower_and_an_unchanged_one_records_nothing() -> None:
    lead = engaged_lead([ActivityKind.DEMO_REQUEST, ActivityKind.PRICING_PAGE] * 3)
    before = lead.score
    version = lead.version
    later = lead.last_event_at + timedelta(days=90)
    out = rescore([lead], V1, lambda _lead: later, later, "decay:test")
    assert out.scored == 1 and list(out.touched) == [lead.id]
    assert lead.version == version + 1
    assert lead.score is not None and before is not None and lead.score < before
    events = lead.collect_events()
    assert events[-1].caused_by_event_id == "decay:test"
    assert events[-1].previous_score == before
    again = rescore([lead], V1, lambda _lead: later, later, "decay:test")
    assert again.scored == 0 and again.touched == {}
    assert lead.version == version + 1
