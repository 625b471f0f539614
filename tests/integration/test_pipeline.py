"""The batch processor and the score-event relay on real PostgreSQL and Kafka."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta

import pytest

from adapters.eventstore import SCORED_TOPIC
from adapters.settings import Settings
from domain.events import ActivityKind
from domain.lead import Lead, lead_aggregate_id, score_event_id
from domain.transitions import SCORE_UPDATED, transitions
from streams.bootstrap import Engine, bootstrap
from streams.relay import ScoreEventRelay
from tests.support.factories import T0, FixedScorer, activity, created
from tests.support.pipeline import consume_all, encoded

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    e = bootstrap(settings, scorer=FixedScorer())
    yield e
    e.close()


def test_processor_counts_every_message(engine: Engine) -> None:
    events = [created(lead="a"), created(lead="b"), activity(ActivityKind.DEMO_REQUEST, lead="a")]
    values: list[bytes | None] = [*encoded(engine, events), b"garbage", None]
    stats = engine.processor.process(values)
    assert (stats.received, stats.applied, stats.invalid, stats.duplicates) == (5, 3, 2, 0)
    assert stats.scored == 2
    again = engine.processor.process(encoded(engine, events))
    assert (again.applied, again.duplicates, again.scored) == (0, 3, 0)
    # in = stored + duplicates + dead-lettered/invalid, over both batches
    t = engine.processor.totals
    assert t.received == t.applied + t.duplicates + t.invalid + t.failed


def test_store_holds_exactly_the_applied_events_after_a_cold_restart(
    engine: Engine, settings: Settings
) -> None:
    events = [created(lead="a"), activity(lead="a"), activity(lead="a")]
    engine.processor.process(encoded(engine, events))
    # A new engine has a cold cache: dedup must come from the stored history.
    fresh = bootstrap(settings, scorer=FixedScorer())
    try:
        stats = fresh.processor.process(encoded(fresh, events))
        assert (stats.applied, stats.duplicates) == (0, 3)
        lead = fresh.store.load([lead_aggregate_id("org-1", "a")])[lead_aggregate_id("org-1", "a")]
        assert lead is not None
        assert all(lead.knows_applied(e.event_id) for e in events)
        kinds = [n.topic.rsplit(".", 1)[-1] for n in fresh.store.notifications(0, 100)]
        assert kinds.count("LeadCreated") == 1 and kinds.count("ActivityRecorded") == 2
    finally:
        fresh.close()


def test_redelivery_older_than_a_lead_remembers_is_a_duplicate(engine: Engine) -> None:
    """A lead with a longer history than its window of ids: the store answers for the
    old ones, in any batch, warm or after the lead was evicted."""
    n = Lead.RECENT_EVENT_IDS * 2
    events = [created(lead="h")] + [
        activity(lead="h", at=T0 + timedelta(minutes=m)) for m in range(n)
    ]
    first = engine.processor.process(encoded(engine, events))
    assert (first.applied, first.duplicates) == (n + 1, 0)
    fresh = [activity(lead="h", at=T0 + timedelta(days=1))]
    # The old ids again, mixed with a new one, warm and then cold.
    warm = engine.processor.process(encoded(engine, events[:4] + fresh + events[-2:]))
    assert (warm.applied, warm.duplicates) == (1, 6)
    engine.store.evict([lead_aggregate_id("org-1", "h")])
    cold = engine.processor.process(encoded(engine, events + fresh))
    assert (cold.applied, cold.duplicates) == (0, n + 2)
    stored = [x for x in engine.store.all_notifications() if x.topic != SCORED_TOPIC]
    assert len(stored) == n + 2


def test_relay_publishes_every_stored_score_once_with_stable_ids(
    engine: Engine, settings: Settings
) -> None:
    events = [created(lead=f"l{i}") for i in range(20)]
    events += [activity(ActivityKind.DEMO_REQUEST, lead=f"l{i}") for i in range(0, 20, 2)]
    engine.processor.process(encoded(engine, events[:20]))
    engine.processor.process(encoded(engine, events[20:]))
    stored = engine.store.notifications(0, 1000, topics=[SCORED_TOPIC])
    assert len(stored) == 30

    relay: ScoreEventRelay
    with engine.relay() as relay:
        assert relay.publish_once() == 30
        assert relay.publish_once() == 0
    # A relay that restarts from the tracked position publishes nothing again.
    with engine.relay() as relay:
        assert relay.publish_once() == 0

    # Each score once as lead.score.updated, plus once per typed event it is.
    typed = Counter(
        kind
        for n in stored
        for ev in [engine.store.to_event(n)]
        for kind in transitions(ev.previous_grade, ev.grade, ev.previous_stage, ev.stage)
    )
    messages = consume_all(settings, expected=30 + typed.total())
    assert len(messages) == 30 + typed.total()
    records = [engine.catalog.decode(v) for _k, v in messages]
    assert Counter(r["event_type"] for r in records) == {SCORE_UPDATED: 30, **typed}
    assert len({r["event_id"] for r in records}) == len(records)
    by_position = {r["position"]: r for r in records if r["event_type"] == SCORE_UPDATED}
    for note in stored:
        r = by_position[note.id]
        ev = engine.store.to_event(note)
        assert r["event_id"] == str(score_event_id(ev.originator_id, ev.originator_version))
        assert r["lead_id"] == ev.lead_id and r["org_id"] == "org-1"
        assert r["new_score"] == ev.score and r["model_version"] == "test-1"
        assert set(r["components"]) == {"fit", "engagement"}
        assert r["grade"][0] in "ABC" and r["grade"][1] in "123"
    # The key is org/lead: a subscriber filters an org by its key prefix.
    assert all(
        k == f"org-1/{r['lead_id']}".encode() for (k, _v), r in zip(messages, records, strict=True)
    )
    rescored = [r for r in by_position.values() if r["previous_score"] is not None]
    assert len(rescored) == 10 and all(r["new_score"] > r["previous_score"] for r in rescored)


def test_relay_crash_before_tracking_republishes_same_event_ids(
    engine: Engine, settings: Settings
) -> None:
    engine.processor.process(encoded(engine, [created(lead=f"m{i}") for i in range(5)]))
    with engine.relay() as relay:
        relay.tracking.set = lambda position: None  # type: ignore[method-assign]  # dies before tracking
        assert relay.publish_once() == 5
    with engine.relay() as relay:
        assert relay.publish_once() == 5  # restarted: publishes again
    records = [engine.catalog.decode(v) for _k, v in consume_all(settings, expected=10)]
    assert len(records) == 10
    assert len({r["event_id"] for r in records}) == 5  # duplicates only with the same id


def test_qualification_and_grade_changes_are_their_own_score_events(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> None:
    rules = tmp_path_factory.mktemp("rules")
    (rules / "org-1.yaml").write_text(
        "version: 7\nthresholds: {mql: 25, sql: 45}\ndisqualify: {titles: ['student']}\n"
    )
    e = bootstrap(
        dataclasses.replace(settings, scoring_config_dir=str(rules)), scorer=FixedScorer()
    )
    try:
        # FixedScorer: 10 points, +20 per demo request. "a" climbs to mql then sql.
        demo = ActivityKind.DEMO_REQUEST
        e.processor.process(encoded(e, [created(lead="a"), created(lead="s", title="Student")]))
        e.processor.process(encoded(e, [activity(demo, lead="a")]))
        e.processor.process(encoded(e, [activity(demo, lead="a")]))
        with e.relay() as relay:
            assert relay.publish_once() == 4
        records = [e.catalog.decode(v) for _k, v in consume_all(settings, expected=7)]
    finally:
        e.close()
    seen = [
        (r["lead_id"], r["event_type"], r["stage"], r["previous_stage"])
        for r in records
        if r["event_type"] != "lead.grade_changed"
    ]
    assert sorted(seen) == sorted(
        [
            ("a", SCORE_UPDATED, "lead", None),
            ("s", SCORE_UPDATED, "disqualified", None),
            ("s", "lead.disqualified", "disqualified", None),
            ("a", SCORE_UPDATED, "mql", "lead"),
            ("a", "lead.qualified", "mql", "lead"),
            ("a", SCORE_UPDATED, "sql", "mql"),
            ("a", "lead.qualified", "sql", "mql"),
        ]
    )
    assert all(r["rules_version"] == "7" for r in records)
    assert len({r["event_id"] for r in records}) == len(records)
    # A score that moves the grade is published once more as lead.grade_changed; demo
    # requests move engagement up a band, so "a" has at least one.
    moved = {
        r["position"]
        for r in records
        if r["event_type"] == SCORE_UPDATED and r["previous_grade"] not in (None, r["grade"])
    }
    changed = {r["position"] for r in records if r["event_type"] == "lead.grade_changed"}
    assert changed == moved and moved


def test_score_events_are_keyed_org_slash_lead_and_filter_by_prefix(
    engine: Engine, settings: Settings
) -> None:
    # The same lead ids (one with a `/`) in two orgs: only the key's org part differs.
    leads = ["same", "a/b"]
    events = [created(lead=lead, org=org) for org in ("org-a", "org-b") for lead in leads]
    assert engine.processor.process(encoded(engine, events)).applied == 4
    with engine.relay() as relay:
        assert relay.publish_once() == 4
    messages = consume_all(settings, expected=4)
    records = [(k, engine.catalog.decode(v)) for k, v in messages]
    assert sorted(k for k, _r in records) == [
        b"org-a/a/b", b"org-a/same", b"org-b/a/b", b"org-b/same"
    ]  # fmt: skip
    for key, r in records:
        org, _, lead = key.decode().partition("/")  # the first `/` splits it
        assert (org, lead) == (r["org_id"], r["lead_id"])
    # A subscriber for org-a filters by prefix and sees only org-a's scores.
    mine = [r for k, r in records if k.startswith(b"org-a/")]
    assert sorted(r["lead_id"] for r in mine) == ["a/b", "same"]
    assert {r["org_id"] for r in mine} == {"org-a"}
