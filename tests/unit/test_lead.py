from datetime import timedelta

from domain.events import ActivityKind, EventType
from domain.lead import Lead, lead_aggregate_id, score_event_id
from tests.factories import T0, activity, created, outcome


def test_created_lead_holds_its_profile_and_event_id() -> None:
    ev = created()
    lead = Lead.open(ev)
    assert lead.id == lead_aggregate_id("org-1", "lead-1")
    assert lead.profile["title"] == "VP of Engineering"
    assert ev.event_id in lead.applied_event_ids
    assert [type(e).__name__ for e in lead.collect_events()] == ["LeadCreated"]


def test_same_event_id_applies_once() -> None:
    lead = Lead.open(created())
    ev = activity(ActivityKind.DEMO_REQUEST)
    assert lead.handle(ev) is True
    assert lead.handle(ev) is False
    assert lead.activity_counts == {"demo_request": 1}
    assert len(lead.collect_events()) == 2  # created + one activity


def test_lead_first_seen_through_an_activity_is_opened_then_applied() -> None:
    ev = activity(ActivityKind.PAGE_VIEW, lead="lead-9")
    lead = Lead.open(ev)
    assert lead.profile == {}
    assert lead.activity_counts == {"page_view": 1}
    assert ev.event_id in lead.applied_event_ids
    late_created = created(lead="lead-9", at=T0 + timedelta(hours=1))
    assert lead.handle(late_created) is True
    assert lead.profile["company"] == "Example"


def test_outcomes_are_recorded() -> None:
    lead = Lead.open(created())
    lead.handle(outcome(EventType.LEAD_DISQUALIFIED))
    assert lead.outcome == "disqualified"


def test_org_is_part_of_the_identity() -> None:
    assert lead_aggregate_id("org-1", "lead-1") != lead_aggregate_id("org-2", "lead-1")


def test_replaying_stored_events_rebuilds_the_same_state() -> None:
    lead = Lead.open(created())
    for d in range(5):
        lead.handle(activity(ActivityKind.EMAIL_CLICK, at=T0 + timedelta(days=d)))
    events = lead.collect_events()
    rebuilt = None
    for e in events:
        rebuilt = e.mutate(rebuilt)
    assert rebuilt is not None
    assert rebuilt.applied_event_ids == lead.applied_event_ids
    assert rebuilt.decayed == lead.decayed
    assert rebuilt.version == lead.version


def test_score_event_id_is_stable() -> None:
    agg = lead_aggregate_id("org-1", "lead-1")
    assert score_event_id(agg, 3) == score_event_id(agg, 3)
    assert score_event_id(agg, 3) != score_event_id(agg, 4)
