"""The custom world: deterministic, valid, and learnable only from the org's own fields."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from devtools.world_custom import LEAK_ATTRIBUTE, LEAK_VALUE, CustomWorld, custom_world
from domain.events import ActivityKind, EventType, LeadEvent
from streams.codec import event_to_record, validate

POINT = timedelta(days=3)
HORIZON = timedelta(days=30)
B2B = ("title", "industry", "country", "source", "employees")


@pytest.fixture(scope="module")
def world() -> CustomWorld:
    return custom_world(leads=4000, seed=7)


def _outcomes(world: CustomWorld) -> dict[str, LeadEvent]:
    ends = (EventType.LEAD_CONVERTED, EventType.LEAD_DISQUALIFIED)
    return {ev.lead_id: ev for ev in world.events if ev.event_type in ends}


def _created(world: CustomWorld) -> dict[str, LeadEvent]:
    return {ev.lead_id: ev for ev in world.events if ev.event_type is EventType.LEAD_CREATED}


def test_the_same_seed_gives_the_same_world_and_another_seed_another() -> None:
    a, b = custom_world(leads=300, seed=3), custom_world(leads=300, seed=3)
    assert a.events == b.events
    assert a.events != custom_world(leads=300, seed=4).events
    assert len({ev.event_id for ev in a.events}) == len(a.events)


def test_events_are_in_time_order_within_the_window_and_each_lead_starts_created(
    world: CustomWorld,
) -> None:
    times = [ev.occurred_at for ev in world.events]
    assert times == sorted(times)
    assert world.start <= times[0] and times[-1] <= world.end
    first: dict[str, EventType] = {}
    for ev in world.events:
        first.setdefault(ev.lead_id, ev.event_type)
    assert set(first.values()) == {EventType.LEAD_CREATED}
    assert len(first) == 4000


def test_every_event_passes_the_engines_validation(world: CustomWorld) -> None:
    for ev in world.events:
        validate(event_to_record(ev), now=world.end)


def test_activity_stops_at_the_outcome(world: CustomWorld) -> None:
    outcomes = _outcomes(world)
    for ev in world.events:
        done = outcomes.get(ev.lead_id)
        if done is not None and ev is not done:
            assert ev.occurred_at < done.occurred_at


def test_conversion_rate_and_widely_spread_times_to_conversion(world: CustomWorld) -> None:
    outcomes, created = _outcomes(world), _created(world)
    kinds = Counter(ev.event_type for ev in outcomes.values())
    rate = kinds[EventType.LEAD_CONVERTED] / len(created)
    assert 0.25 <= rate <= 0.35, rate
    assert 0.05 <= kinds[EventType.LEAD_DISQUALIFIED] / len(created) <= 0.25
    days = np.array(
        [
            (ev.occurred_at - created[ev.lead_id].occurred_at) / timedelta(days=1)
            for ev in outcomes.values()
            if ev.event_type is EventType.LEAD_CONVERTED
        ]
    )
    low, median, high = np.quantile(days, [0.05, 0.5, 0.95])
    assert low < 0.5 and 2 < median < 30 and high > 60, (low, median, high)
    # Open leads are censored at every age, not one.
    open_ages = [
        (world.end - ev.occurred_at) / timedelta(days=1)
        for lead, ev in created.items()
        if lead not in outcomes
    ]
    assert min(open_ages) < 10 and max(open_ages) > 300


def test_attributes_and_activity_properties_are_carried(world: CustomWorld) -> None:
    created = _created(world)
    occupations = Counter(ev.attributes.get("occupation", "") for ev in created.values())
    assert {"working professional", "student", "unemployed", ""} <= occupations.keys()
    late = [ev for ev in world.events if ev.event_type is EventType.LEAD_UPDATED]
    assert late and all(ev.attributes for ev in late)
    views = [ev for ev in world.events if ev.activity_kind is ActivityKind.PAGE_VIEW]
    assert all(int(ev.activity_properties["seconds_on_site"]) >= 0 for ev in views)
    assert any("campaign" in ev.activity_properties for ev in views)


def test_truth_counts_only_what_happened_by_then(world: CustomWorld) -> None:
    views = [ev for ev in world.events if ev.activity_kind is ActivityKind.PAGE_VIEW]
    lead = Counter(ev.lead_id for ev in views).most_common(1)[0][0]
    mine = [ev for ev in views if ev.lead_id == lead]
    middle = mine[len(mine) // 2]
    seen = [ev for ev in mine if ev.occurred_at <= middle.occurred_at]
    truth = world.truth(lead, middle.occurred_at)
    assert truth["visits"] == len(seen) < len(mine)
    assert truth["seconds_on_site"] == sum(
        int(ev.activity_properties["seconds_on_site"]) for ev in seen
    )
    before = world.truth(lead, middle.occurred_at - timedelta(milliseconds=1))
    assert before["visits"] == len(seen) - 1
    created = _created(world)[lead]
    at_birth = world.truth(lead, created.occurred_at)
    assert at_birth["visits"] == 0 and at_birth["seconds_on_site"] == 0.0
    assert {k: at_birth[k] for k in world.truth_categorical if at_birth[k]} == {
        k: v for k, v in created.attributes.items() if k in world.truth_categorical
    }
    assert set(world.truth_names) >= set(world.truth_categorical)


def _rows(world: CustomWorld) -> tuple[list[str], pd.DataFrame, pd.DataFrame, np.ndarray]:
    """One row per lead at created + 3 days: label = converts within 30 days after it;
    only leads still open at the point whose label is known by ``end``."""
    outcomes, created = _outcomes(world), _created(world)
    leads, truth, profile, labels = [], [], [], []
    for lead, ev in created.items():
        point = ev.occurred_at + POINT
        done = outcomes.get(lead)
        if done is not None and done.occurred_at <= point:
            continue
        known = (done is not None and done.occurred_at <= point + HORIZON) or (
            point + HORIZON <= world.end
        )
        if not known:
            continue
        leads.append(lead)
        truth.append(world.truth(lead, point))
        profile.append({k: ev.profile.get(k) for k in B2B})
        labels.append(
            done is not None
            and done.event_type is EventType.LEAD_CONVERTED
            and done.occurred_at <= point + HORIZON
        )
    return leads, pd.DataFrame(truth), pd.DataFrame(profile), np.array(labels, dtype=int)


def _auc(frame: pd.DataFrame, labels: np.ndarray, categorical: tuple[str, ...]) -> float:
    frame = frame.copy()
    for name in categorical:
        frame[name] = frame[name].astype("category")
    rng = np.random.default_rng(0)
    test = rng.random(len(frame)) < 0.3
    model = lgb.LGBMClassifier(
        n_estimators=150, learning_rate=0.05, num_leaves=15, min_child_samples=40, verbose=-1
    )
    model.fit(frame[~test], labels[~test])
    return float(roc_auc_score(labels[test], model.predict_proba(frame[test])[:, 1]))


def test_the_truth_is_learnable_and_the_b2b_profile_is_not(world: CustomWorld) -> None:
    _, truth, profile, labels = _rows(world)
    assert 0.1 < labels.mean() < 0.5
    truth_auc = _auc(truth, labels, world.truth_categorical)
    profile_auc = _auc(profile, labels, ("title", "industry", "country", "source"))
    print(f"AUC on the truth {truth_auc:.3f}, on the B2B profile {profile_auc:.3f}")
    assert truth_auc > 0.75
    assert profile_auc < 0.6


def test_the_leaky_world_is_the_same_world_plus_a_tag_that_gives_the_outcome_away(
    world: CustomWorld,
) -> None:
    leaky = custom_world(leads=4000, seed=7, leaky=True)
    tags = [ev for ev in leaky.events if LEAK_ATTRIBUTE in ev.attributes]
    assert [ev for ev in leaky.events if LEAK_ATTRIBUTE not in ev.attributes] == world.events
    outcomes, created = _outcomes(world), _created(world)
    converted = {k for k, ev in outcomes.items() if ev.event_type is EventType.LEAD_CONVERTED}
    said = {ev.lead_id for ev in tags if ev.attributes[LEAK_ATTRIBUTE] == LEAK_VALUE}
    # Present early: within hours of creation, before any outcome.
    for ev in tags:
        assert ev.occurred_at - created[ev.lead_id].occurred_at <= timedelta(hours=6)
        done = outcomes.get(ev.lead_id)
        assert done is None or ev.occurred_at < done.occurred_at
    hit = len(said & converted) / len(converted)
    false_alarm = len(said - converted) / (len(created) - len(converted))
    assert hit > 0.95 and false_alarm < 0.02
    # One feature alone separates the classes: what a leakage guard looks for.
    leads, _, _, labels = _rows(leaky)
    tagged = np.array([lead in said for lead in leads], dtype=int)
    leak_auc = roc_auc_score(labels, tagged)
    # Against the final outcome (converted or not) the tag alone is above the 0.97 a
    # single-feature leakage guard looks for.
    final_auc = roc_auc_score(
        [lead in converted for lead in created], [lead in said for lead in created]
    )
    print(
        f"AUC of the leaked tag alone: 30-day label {leak_auc:.3f}, final outcome {final_auc:.3f}"
    )
    assert leak_auc > 0.9
    assert final_auc > 0.975
