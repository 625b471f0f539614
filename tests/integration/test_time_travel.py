"""Time travel over HTTP, checked against a replay of the event store.

The API answers as-of from the library's repository (snapshots, its own query per lead);
the expected state here is rebuilt independently: the lead's events read from the global
notification log, the longest prefix stored at or before T, applied one by one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from adapters.eventstore import open_store
from adapters.settings import Settings
from domain.lead import Lead
from tests.support.api import ORG_A, ORG_B, SHARED, Api, live_api

pytestmark = pytest.mark.integration


@dataclasses.dataclass
class Replay:
    """Every lead's events, from the notification log (not the per-lead query the API uses)."""

    events: dict[tuple[str, str], list[Any]]

    def state_at(self, org: str, lead: str, at: datetime) -> Lead | None:
        state: Lead | None = None
        reached: datetime | None = None
        for ev in self.events[(org, lead)]:
            reached = ev.timestamp if reached is None else max(reached, ev.timestamp)
            if reached > at:
                break
            state = ev.mutate(state)
        return state


@pytest.fixture(scope="module")
def api(services: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    unlimited = dataclasses.replace(services, api_key_rate=0, api_ip_rate=0)
    # The committed model, not a fixed scorer: its scores come with factors to diff.
    with live_api(unlimited, tmp_path_factory.mktemp("time-travel"), "model") as running:
        yield running


@pytest.fixture(scope="module")
def replay(api: Api) -> Replay:
    store = open_store(api.settings.pg_dsn, cache_size=0)
    try:
        events: dict[tuple[str, str], list[Any]] = {}
        for note in store.all_notifications():
            ev = store.to_event(note)
            events.setdefault((ev.org_id, ev.lead_id), []).append(ev)
    finally:
        store.close()
    for evs in events.values():
        evs.sort(key=lambda e: e.originator_version)
    return Replay(events)


def iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat()


def as_of(api: Api, org: str, lead: str, at: datetime) -> Any:
    reply = api.get(f"/leads/{quote(lead, safe='')}/as-of", org, at=iso(at))
    assert reply.status == 200, reply.raw
    return reply.body


def instants(replay: Replay) -> st.SearchStrategy[tuple[str, str, datetime]]:
    keys = sorted(k for k in replay.events if k[0] in (ORG_A, ORG_B))

    @st.composite
    def pick(draw: st.DrawFn) -> tuple[str, str, datetime]:
        org, lead = draw(st.sampled_from(keys))
        stamps = [ev.timestamp for ev in replay.events[(org, lead)]]
        first, last = min(stamps), max(stamps)
        if draw(st.booleans()):  # exactly at a stored event: the boundaries
            at = draw(st.sampled_from(stamps))
        else:
            span = (last - first) + timedelta(seconds=1)
            at = first + span * draw(st.floats(0, 1))
        return org, lead, at

    return pick()


def test_as_of_equals_the_events_up_to_that_instant_applied(api: Api, replay: Replay) -> None:
    checked = {"scored": 0, "unscored": 0, "versions": set()}

    @hsettings(
        max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(instants(replay))
    def check(case: tuple[str, str, datetime]) -> None:
        org, lead, at = case
        expected = replay.state_at(org, lead, at)
        assert expected is not None  # every instant drawn is at or after the first event
        body = as_of(api, org, lead, at)
        assert body["lead_id"] == lead and body["org_id"] == org
        assert body["version"] == expected.version
        assert body["profile"] == expected.profile
        assert body["activity_counts"] == expected.activity_counts
        status = expected.outcome if expected.outcome else "open"
        assert body["status"] == status
        if expected.score is None:
            assert body["score"] is None
            checked["unscored"] += 1
        else:
            score = body["score"]
            assert score["score"] == pytest.approx(expected.score)
            assert score["grade"] == expected.grade
            assert score["stage"] == expected.stage
            assert score["model_version"] == expected.model_version
            assert score["factors"] == expected.factors
            checked["scored"] += 1
        checked["versions"].add(body["version"])  # type: ignore[attr-defined]

    check()
    assert checked["scored"] > 0
    assert len(checked["versions"]) > 3  # type: ignore[arg-type]


def rescored(replay: Replay, org: str = ORG_A, least: int = 2) -> list[tuple[str, list[Any]]]:
    """The org's leads scored at least ``least`` times, with their scores."""
    out = []
    for (o, lead), events in sorted(replay.events.items()):
        scored = [ev for ev in events if isinstance(ev, Lead.LeadScored)]
        if o == org and len(scored) >= least:
            out.append((lead, scored))
    return out


def test_as_of_moves_with_the_instant(api: Api, replay: Replay) -> None:
    lead, scored = rescored(replay, least=3)[0]
    for ev in scored:
        body = as_of(api, ORG_A, lead, ev.timestamp)
        assert body["score"]["score"] == pytest.approx(ev.score)
        assert body["score"]["version"] == ev.originator_version
        assert body["score"]["fit"] == pytest.approx(ev.components["fit"])
    # A microsecond before the first score: not scored yet.
    before = as_of(api, ORG_A, lead, scored[0].timestamp - timedelta(microseconds=1))
    assert before["score"] is None
    shared = as_of(api, ORG_A, SHARED, datetime.now(UTC))
    assert shared["profile"]["company"] == "Alpha Corp"


def test_bad_instants_are_4xx_json(api: Api, replay: Replay) -> None:
    path = f"/leads/{SHARED}/as-of"
    created = replay.events[(ORG_A, SHARED)][0].timestamp
    cases = {
        "missing": None,
        "unparseable": "yesterday",
        "no offset": "2026-01-05T10:00:00",
        "bad month": "2026-13-05T10:00:00Z",
        "before creation": iso(created - timedelta(seconds=1)),
        "in the future": iso(datetime.now(UTC) + timedelta(days=1)),
    }
    for what, at in cases.items():
        reply = api.get(path, ORG_A, at=at)
        assert reply.status == 422, (what, reply.raw)
        assert reply.headers["content-type"] == "application/json"
        body = reply.body
        assert body["error"] == "invalid_parameters", what
        assert [d["parameter"] for d in body["details"]] == ["at"], what


def test_another_orgs_lead_is_not_found(api: Api, replay: Replay) -> None:
    now = iso(datetime.now(UTC))
    only_b = "only-b"
    for path in (f"/leads/{only_b}/as-of", f"/leads/{only_b}/timeline", f"/leads/{only_b}/diff"):
        reply = api.get(path, ORG_A, at=now, **({"from": now, "to": now}))
        assert reply.status == 404, (path, reply.raw)
        assert reply.body["error"] == "not_found"
    # The same lead id in two orgs: each key sees its own org's lead.
    a = as_of(api, ORG_A, SHARED, datetime.now(UTC))
    b = as_of(api, ORG_B, SHARED, datetime.now(UTC))
    assert (a["profile"]["company"], b["profile"]["company"]) == ("Alpha Corp", "Beta Ltd")


def test_timeline_lists_every_score_with_its_cause(api: Api, replay: Replay) -> None:
    lead, scored = rescored(replay, least=3)[0]
    events = replay.events[(ORG_A, lead)]
    reply = api.get(f"/leads/{lead}/timeline", ORG_A)
    assert reply.status == 200, reply.raw
    items = reply.body["items"]
    assert [i["version"] for i in items] == [ev.originator_version for ev in scored]
    assert [i["score"] for i in items] == pytest.approx([ev.score for ev in scored])
    by_source = {ev.source_event_id: ev for ev in events if getattr(ev, "source_event_id", None)}
    for item, ev in zip(items, scored, strict=True):
        cause = by_source[ev.caused_by_event_id]
        assert item["cause"]["event_id"] == ev.caused_by_event_id
        assert item["cause"]["kind"] == "lead_event"
        assert item["cause"]["type"] == type(cause).__name__
        assert item["cause"]["activity"] == getattr(cause, "kind", None)
        assert item["model_version"] == ev.model_version
        assert item["factors"] == ev.factors
        assert item["fit"] == pytest.approx(ev.components["fit"])
        assert item["events"], "each score follows the lead-events it applied"
        assert item["events"][-1]["event_id"] == ev.caused_by_event_id
    # SHARED's two demo requests came in one batch: one score, named after the last.
    shared = api.get(f"/leads/{SHARED}/timeline", ORG_A).body["items"]
    assert [e["activity"] for e in shared[-1]["events"]][-2:] == ["demo_request"] * 2


def test_diff_sums_to_the_score_change(api: Api, replay: Replay) -> None:
    checked = named = 0
    for lead, scored in rescored(replay)[:15]:
        org, events = ORG_A, replay.events[(ORG_A, lead)]
        start, end = scored[0].timestamp, scored[-1].timestamp
        reply = api.get(
            f"/leads/{quote(lead, safe='')}/diff", org, **{"from": iso(start), "to": iso(end)}
        )
        assert reply.status == 200, reply.raw
        body = reply.body
        assert body["score_from"] == pytest.approx(scored[0].score)
        assert body["score_to"] == pytest.approx(scored[-1].score)
        total = sum(f["change"] for f in body["factors"]) + body["rest"]
        assert total == pytest.approx(body["score_change"])
        assert body["score_change"] == pytest.approx(scored[-1].score - scored[0].score)
        between = [
            ev.originator_version
            for ev in events
            if scored[0].originator_version < ev.originator_version <= scored[-1].originator_version
            and not isinstance(ev, Lead.LeadScored)
        ]
        assert [e["version"] for e in body["events"]] == between
        checked += 1
        named += bool(body["factors"])
    assert checked >= 3 and named >= 3
    reply = api.get(
        f"/leads/{SHARED}/diff",
        ORG_A,
        **{"from": iso(datetime.now(UTC)), "to": iso(datetime.now(UTC) - timedelta(hours=1))},
    )
    assert reply.status == 422 and reply.body["details"][0]["parameter"] == "to"


def test_leaderboard_as_of_ranks_by_the_scores_of_that_instant(api: Api, replay: Replay) -> None:
    scored = sorted(
        (
            ev
            for (org, _), evs in replay.events.items()
            if org == ORG_A
            for ev in evs
            if isinstance(ev, Lead.LeadScored)
        ),
        key=lambda ev: ev.scored_at,
    )
    middle = scored[len(scored) // 2].scored_at
    # Expected: each lead's last score with scored_at <= middle (score_history's `at`).
    latest: dict[str, Any] = {}
    for ev in scored:
        if ev.scored_at <= middle:
            prev = latest.get(ev.lead_id)
            if prev is None or ev.originator_version > prev.originator_version:
                latest[ev.lead_id] = ev
    want = sorted(latest.values(), key=lambda ev: (-ev.score, ev.lead_id))[:20]
    reply = api.get("/leaderboard", ORG_A, as_of=iso(middle), limit=20)
    assert reply.status == 200, reply.raw
    items = reply.body["items"]
    assert [i["lead_id"] for i in items] == [ev.lead_id for ev in want]
    assert [i["score"] for i in items] == pytest.approx([ev.score for ev in want])
    assert [i["rank"] for i in items] == list(range(1, len(want) + 1))
    # Now: every lead's current score; org B's leads never appear.
    now = api.get("/leaderboard", ORG_A, as_of=iso(datetime.now(UTC)), limit=1000).body
    assert "only-b" not in {i["lead_id"] for i in now["items"]}
    assert api.get("/leaderboard", ORG_A, as_of="last monday").status == 422
