"""The workload generator: deterministic, exact, ordered, encodable and realistic."""

from __future__ import annotations

import io
import json
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devtools.workload import DEFAULT_START, _uuid4_str, generate, org_ids
from domain.events import PROFILE_FIELDS, EventType, LeadEvent
from domain.firmographics import SOURCES, department, is_free_mail, seniority
from streams.codec import event_to_record, record_to_event

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "avro" / "lead_event.v1.avsc"
OUTCOMES = {EventType.LEAD_CONVERTED, EventType.LEAD_DISQUALIFIED}


@pytest.fixture(scope="module")
def workload() -> list[LeadEvent]:
    return list(generate(4, 1_500, 15_000, seed=11))


def by_lead(events: list[LeadEvent]) -> dict[tuple[str, str], list[LeadEvent]]:
    out: dict[tuple[str, str], list[LeadEvent]] = defaultdict(list)
    for ev in events:
        out[(ev.org_id, ev.lead_id)].append(ev)
    return out


def assert_well_formed(events: list[LeadEvent], orgs: int, start: datetime, span_days: int) -> None:
    end = start + timedelta(days=span_days)
    assert all(a.occurred_at <= b.occurred_at for a, b in zip(events, events[1:], strict=False))
    assert all(start <= ev.occurred_at < end for ev in events)
    assert {ev.org_id for ev in events} <= set(org_ids(orgs))
    for history in by_lead(events).values():
        assert history[0].event_type is EventType.LEAD_CREATED
        assert sum(ev.event_type is EventType.LEAD_CREATED for ev in history) == 1
        outcomes = [i for i, ev in enumerate(history) if ev.event_type in OUTCOMES]
        # At most one outcome, and nothing happens to a lead after it.
        assert outcomes in ([], [len(history) - 1])


def test_same_seed_same_events_other_seed_other_events() -> None:
    a = list(generate(3, 300, 3_000, seed=5))
    b = list(generate(3, 300, 3_000, seed=5))
    c = list(generate(3, 300, 3_000, seed=6))
    assert a == b
    assert [e.event_id for e in a] != [e.event_id for e in c]


@pytest.mark.parametrize(
    ("orgs", "leads", "events"),
    [(1, 1, 1), (1, 1, 50), (3, 100, 100), (3, 100, 101), (5, 200, 5_000), (2, 500, 300)],
)
def test_exactly_the_requested_number_of_events(orgs: int, leads: int, events: int) -> None:
    evs = list(generate(orgs, leads, events, seed=3))
    assert len(evs) == events
    # Every lead starts with its LeadCreated, so fewer events than leads means fewer leads.
    assert len(by_lead(evs)) == min(leads, events)
    if events <= leads:
        assert all(ev.event_type is EventType.LEAD_CREATED for ev in evs)


def test_nothing_to_generate() -> None:
    assert list(generate(2, 0, 100)) == []
    assert list(generate(2, 100, 0)) == []
    with pytest.raises(ValueError):
        list(generate(0, 10, 10))


def test_a_generator_not_a_list() -> None:
    it = generate(2, 10, 100)
    assert isinstance(it, Iterator)
    assert next(it).event_type is EventType.LEAD_CREATED


def test_per_lead_order_and_outcome_last(workload: list[LeadEvent]) -> None:
    assert_well_formed(workload, 4, DEFAULT_START, 60)
    types = Counter(ev.event_type for ev in workload)
    assert types[EventType.LEAD_CREATED] == 1_500
    for t in EventType:
        assert types[t] > 0, t


def test_event_ids_are_unique_uuid4(workload: list[LeadEvent]) -> None:
    ids = [ev.event_id for ev in workload]
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 4 and str(uuid.UUID(i)) == i for i in ids[:2_000])


@given(st.integers(min_value=0, max_value=2**128 - 1))
def test_fast_uuid_matches_the_uuid_module(bits: int) -> None:
    assert _uuid4_str(bits) == str(uuid.UUID(int=bits, version=4))


def test_lead_ids_unique_and_within_org(workload: list[LeadEvent]) -> None:
    orgs_of: dict[str, set[str]] = defaultdict(set)
    for ev in workload:
        orgs_of[ev.lead_id].add(ev.org_id)
        assert ev.lead_id.startswith("lead-") and ev.org_id.startswith("org-")
    assert all(len(o) == 1 for o in orgs_of.values())
    assert org_ids(3) == ["org-001", "org-002", "org-003"]


def test_every_event_survives_an_avro_round_trip(workload: list[LeadEvent]) -> None:
    schema = fastavro.parse_schema(json.loads(SCHEMA_PATH.read_text()))
    for ev in workload:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, schema, event_to_record(ev))
        buf.seek(0)
        decoded = fastavro.schemaless_reader(buf, schema, schema)
        assert record_to_event(decoded) == ev


def test_profiles_look_like_people(workload: list[LeadEvent]) -> None:
    profiles = [ev.profile for ev in workload if ev.event_type is EventType.LEAD_CREATED]
    titles = Counter(str(p["title"]) for p in profiles if "title" in p)
    assert len(titles) >= 150
    # Titles written the way people write them, across the whole seniority range.
    assert {seniority(t) for t in titles} == set(range(7))
    assert len({department(t) for t in titles}) == 9
    assert any(t.lower() == "student" for t in titles)
    assert any(t.startswith("Vice President, ") for t in titles)
    emails = [str(p["email"]) for p in profiles]
    free = sum(map(is_free_mail, emails))
    assert 0.05 < free / len(emails) < 0.4
    assert all("@" in e and " " not in e for e in emails)
    employees = [p["employees"] for p in profiles if "employees" in p]
    assert all(isinstance(n, int) and n >= 1 for n in employees)
    assert min(employees) < 20 and max(employees) > 5_000  # log-normal: a long tail
    assert {p["source"] for p in profiles if "source" in p} <= set(SOURCES)
    # Forms are filled in partially, not every field every time.
    assert any(set(PROFILE_FIELDS) - set(p) for p in profiles)


def test_activities_carry_properties(workload: list[LeadEvent]) -> None:
    acts = [ev for ev in workload if ev.event_type is EventType.ACTIVITY_RECORDED]
    assert all(ev.activity_kind is not None and ev.activity_properties for ev in acts)
    assert all(not ev.profile for ev in acts)
    assert any("campaign" in ev.activity_properties for ev in acts)
    updates = [ev for ev in workload if ev.event_type is EventType.LEAD_UPDATED]
    assert updates and all(ev.profile for ev in updates)
    outcomes = [ev for ev in workload if ev.event_type in OUTCOMES]
    assert all(ev.reason for ev in outcomes)


def test_keen_leads_convert(workload: list[LeadEvent]) -> None:
    """The hidden propensity shows in the events: converters do more, with more intent."""
    stats: dict[str, list[tuple[int, int]]] = {"converted": [], "disqualified": []}
    for history in by_lead(workload).values():
        last = history[-1].event_type
        if last in OUTCOMES:
            acts = [ev for ev in history if ev.event_type is EventType.ACTIVITY_RECORDED]
            intent = sum(ev.activity_kind in ("demo_request", "pricing_page") for ev in acts)
            key = "converted" if last is EventType.LEAD_CONVERTED else "disqualified"
            stats[key].append((len(acts), intent))

    def mean(xs: list[int]) -> float:
        return sum(xs) / len(xs)

    conv, disq = stats["converted"], stats["disqualified"]
    assert len(conv) > 50 and len(disq) > 50
    assert mean([n for n, _ in conv]) > 1.5 * mean([n for n, _ in disq])
    assert mean([i for _, i in conv]) > 2 * mean([i for _, i in disq])
    # ...but not a giveaway: plenty of disqualified leads showed intent too.
    assert sum(i > 0 for _, i in disq) > 0.1 * len(disq)


@settings(max_examples=40, deadline=None)
@given(
    orgs=st.integers(1, 6),
    leads=st.integers(0, 80),
    events=st.integers(0, 600),
    seed=st.integers(0, 2**32),
    span_days=st.integers(1, 90),
    start=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)
    ),
)
def test_any_arguments_give_a_well_formed_history(
    orgs: int, leads: int, events: int, seed: int, span_days: int, start: datetime
) -> None:
    evs = list(generate(orgs, leads, events, seed=seed, start=start, span_days=span_days))
    assert len(evs) == (events if leads else 0)
    assert len(by_lead(evs)) == min(leads, events)
    # Times are whole milliseconds (what Avro carries), from the start truncated to ms.
    first = start.replace(microsecond=start.microsecond // 1000 * 1000)
    assert all(ev.occurred_at.microsecond % 1000 == 0 for ev in evs)
    assert_well_formed(evs, orgs, first, span_days)


def test_fast_enough_for_benchmarks() -> None:
    began = time.perf_counter()
    n = sum(1 for _ in generate(10, 5_000, 100_000, seed=1))
    elapsed = time.perf_counter() - began
    assert n == 100_000
    # ~1.3 s here; a generous bound so a busy shared box does not make it flaky.
    assert elapsed < 15, elapsed
