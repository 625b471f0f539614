import dataclasses
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st
from pympler.asizeof import asizeof

from adapters.modelstore import load_scorer
from devtools.workload import generate
from domain.events import ActivityKind, EventType
from domain.lead import (
    KIND_BUCKETS,
    PROPERTY_BUCKETS,
    WINDOW_DAYS,
    Lead,
    buckets,
    lead_aggregate_id,
    score_event_id,
)
from domain.processing import apply_batch, event_time, undecided
from tests.support.factories import MODEL_DIR, T0, FixedScorer, activity, created, outcome


def test_created_lead_holds_its_profile_and_event_id() -> None:
    ev = created()
    lead = Lead.open(ev)
    assert lead.id == lead_aggregate_id("org-1", "lead-1")
    assert lead.profile["title"] == "VP of Engineering"
    assert lead.knows_applied(ev.event_id) is True
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
    assert lead.knows_applied(ev.event_id) is True
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
    assert rebuilt.recent_event_ids == lead.recent_event_ids
    assert rebuilt.applied_count == lead.applied_count == 6
    assert rebuilt.decayed == lead.decayed
    assert rebuilt.version == lead.version


def test_score_event_id_is_stable() -> None:
    agg = lead_aggregate_id("org-1", "lead-1")
    assert score_event_id(agg, 3) == score_event_id(agg, 3)
    assert score_event_id(agg, 3) != score_event_id(agg, 4)


def test_a_lead_remembers_its_latest_event_ids_only() -> None:
    first = created()
    lead = Lead.open(first)
    assert lead.knows_applied("never-seen") is False  # it still remembers every id
    later = [activity(at=T0 + timedelta(minutes=m)) for m in range(Lead.RECENT_EVENT_IDS + 3)]
    for ev in later:
        assert lead.handle(ev) is True
    assert lead.applied_count == len(later) + 1
    assert list(lead.recent_event_ids) == [ev.event_id for ev in later[-Lead.RECENT_EVENT_IDS :]]
    assert lead.knows_applied(later[-1].event_id) is True
    assert lead.handle(later[-1]) is False
    # Forgotten, and a new id: only the event store can tell these apart.
    assert lead.knows_applied(first.event_id) is None
    assert lead.knows_applied("never-seen") is None


def test_a_redelivery_behind_new_events_in_one_batch_is_still_a_duplicate() -> None:
    """The batch's new events push the oldest remembered id out of the window before its
    redelivery, later in the same batch, is reached: it must be known from the start."""
    lead = Lead.open(created())
    window = [activity(at=T0 + timedelta(minutes=m)) for m in range(Lead.RECENT_EVENT_IDS)]
    for ev in window:
        lead.handle(ev)
    oldest = window[0]
    assert lead.knows_applied(oldest.event_id) is True
    new = activity(at=T0 + timedelta(hours=1))
    agg_id = lead.id
    out = apply_batch([new, oldest], {agg_id: lead}, FixedScorer(), event_time, T0)
    assert (out.applied, out.duplicates) == (1, 1)
    assert lead.activity_counts == {"page_view": Lead.RECENT_EVENT_IDS + 1}


@settings(max_examples=200, deadline=None)
@given(
    deliveries=st.lists(st.integers(0, 30), min_size=1, max_size=120),
    batch=st.integers(1, 40),
    cold=st.booleans(),
)
def test_every_lead_event_applies_once_across_batches_and_cold_reloads(
    deliveries: list[int], batch: int, cold: bool
) -> None:
    """Redeliveries in any order, in batches of any size: a lead longer than what it
    remembers gets its old ids from the store (here: the pairs its events carry), and
    each distinct lead-event is applied exactly once."""
    events = {
        n: activity(lead="l", at=T0 + timedelta(minutes=n)) for n in range(31)
    }  # fmt: skip
    stored_events: list[object] = []  # the event store: every domain event saved
    lead: Lead | None = None
    applied = duplicates = 0
    for start in range(0, len(deliveries), batch):
        chunk = [events[n] for n in deliveries[start : start + batch]]
        agg_id = lead_aggregate_id("org-1", "l")
        if cold and stored_events:  # a restarted worker: rebuilt from the store
            lead = None
            for e in stored_events:
                lead = e.mutate(lead)  # type: ignore[attr-defined]
        leads = {agg_id: lead}
        in_store = {
            (agg_id, e.source_event_id)  # type: ignore[attr-defined]
            for e in stored_events
            if getattr(e, "source_event_id", None)
        }
        stored = {key for key in undecided(chunk, leads) if key in in_store}
        out = apply_batch(chunk, leads, FixedScorer(), event_time, T0, stored=stored)
        applied += out.applied
        duplicates += out.duplicates
        for touched in out.touched.values():
            stored_events.extend(touched.collect_events())
            lead = touched
    ids = [e.source_event_id for e in stored_events if getattr(e, "source_event_id", None)]  # type: ignore[attr-defined]
    assert sorted(ids) == sorted(events[n].event_id for n in set(deliveries))
    assert applied == len(set(deliveries))
    assert duplicates == len(deliveries) - applied


def test_a_leads_state_stops_growing_with_its_history() -> None:
    """The worker's memory is bounded by its aggregate cache only if each cached Lead is:
    3,000 lead-events of one lead (every kind, updates, an outcome) an hour apart (125
    days), scored by the real model with explanations, leave it no bigger than it was once
    its per-day activity windows had had time to fill (2 x WINDOW_DAYS, its 1,440th
    event), give or take a kilobyte: rare kinds fill their days' buckets late."""
    events = [
        dataclasses.replace(ev, occurred_at=T0 + timedelta(hours=i))
        for i, ev in enumerate(generate(1, 1, 3_000, seed=5))
    ]
    assert 2 * WINDOW_DAYS * 24 == 1_440
    scorer = load_scorer(MODEL_DIR, "v1")
    leads: dict = {}
    size_after: dict[int, int] = {}
    for start in range(0, len(events), 10):
        batch = events[start : start + 10]
        out = apply_batch(batch, leads, scorer, event_time, batch[-1].occurred_at)
        for agg_id, lead in out.touched.items():
            lead.collect_events()
            leads[agg_id] = lead
        size_after[start + len(batch)] = asizeof(*leads.values())
    (lead,) = leads.values()
    assert lead.applied_count == 3_000
    assert len(lead.activity_counts) == len(ActivityKind)  # every kind of state filled
    assert lead.score_count > 1 and lead.factors  # rescored, and explained
    settled = max(size for n, size in size_after.items() if 1_440 <= n <= 1_800)
    # Labels such as "no activity for 12 days" may gain a digit: a few bytes, not a
    # record per lead-event (3,000 remembered ids would be over 200 KB).
    assert max(size for n, size in size_after.items() if n > 1_800) <= settled + 1_024
    # The windows hold at most WINDOW_DAYS days of buckets.
    assert all(buckets(e, KIND_BUCKETS) <= WINDOW_DAYS for e in lead.kind_activity.values())
    assert all(buckets(s, PROPERTY_BUCKETS) <= WINDOW_DAYS for s in lead.property_stats.values())
