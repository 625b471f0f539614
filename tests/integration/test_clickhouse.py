"""The ClickHouse read model on real chDB, fed from a real PostgreSQL event store.

Analytics are checked against values computed here, in Python, from the log itself;
normal processing, a rebuild and crashed-then-restarted runs must give identical tables
and identical answers.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from clickhouse_connect.driver.client import Client

from adapters.settings import Settings
from devtools.workload import generate
from domain.events import ActivityKind, EventType, LeadEvent
from domain.features import FEATURE_NAMES
from projections.analytics import Analytics
from projections.base import ProjectionRunner
from projections.clickhouse import ClickHouseProjection, connect
from projections.log import LogEntry, LogReader
from tests.support.factories import FixedScorer, activity, created, outcome
from tests.support.pipeline import store_history

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ORGS = ("org-001", "org-002")
OUTCOMES = ("LeadConverted", "LeadDisqualified")
HIGH = 70.0


class SecondModel(FixedScorer):
    """Another model version, so the history holds scores from two models."""

    version = "test-2"

    def predict(self, rows: Sequence[Sequence[float]]) -> list[float]:
        demo = FEATURE_NAMES.index("n_demo_request")
        return [min(0.99, 0.2 + 0.25 * row[demo]) for row in rows]


def shared_leads() -> list[LeadEvent]:
    """The same lead ids in both orgs, with different fates: isolation must keep them apart."""
    a, b = ORGS
    events = [created(lead="shared-1", org=a), created(lead="shared-1", org=b, source="ads")]
    events += [activity(ActivityKind.DEMO_REQUEST, lead="shared-1", org=a) for _ in range(3)]
    events += [activity(lead="shared-1", org=b), outcome(lead="shared-1", org=a)]
    events += [outcome(EventType.LEAD_DISQUALIFIED, lead="shared-1", org=b)]
    return events


@pytest.fixture
def history(settings: Settings) -> None:
    """Two orgs' leads, activities and outcomes in the event store, scored by two models."""
    events = list(generate(2, 30, 300, seed=11)) + shared_leads()
    half = len(events) // 2
    for scorer, part in ((FixedScorer(), events[:half]), (SecondModel(), events[half:])):
        store_history(settings, part, scorer, batch=60)


@pytest.fixture
def ch(tmp_path: Path) -> Iterator[Client]:
    client = connect(f"chdb://{tmp_path / 'chdb'}")
    yield client
    client.close()  # chDB hosts one data directory per process: free it for the next test


@pytest.fixture
async def pool(settings: Settings, history: None) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(settings.pg_dsn, min_size=1, max_size=2)
    yield p
    await p.close()


async def read_log(pool: asyncpg.Pool) -> list[LogEntry]:
    reader, entries = LogReader(pool), []
    while batch := await reader.read(entries[-1].position if entries else 0, 5000):
        entries.extend(batch)
    return entries


# -- expected values, computed from the log -------------------------------------


def bucket_of(score: float, width: int) -> int:
    return min(int(score // width) * width, max(range(0, 100, width)))


def event_time(e: LogEntry) -> datetime:
    return e.event.created_at if e.kind == "LeadCreated" else e.event.occurred_at


def profile_of(e: LogEntry) -> dict[str, Any]:
    return e.event.profile if e.kind == "LeadCreated" else getattr(e.event, "changes", {})


def rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def expected(entries: Sequence[LogEntry], org: str) -> dict[str, Any]:
    """Every analytics answer for ``org``, from the log alone."""
    leads: dict[str, dict[str, Any]] = {}
    for e in entries:
        ev = e.event
        if ev.org_id != org:
            continue
        lead = leads.setdefault(
            ev.lead_id, {"source": None, "engaged": False, "outcomes": [], "scores": []}
        )
        if e.kind == "LeadScored":
            lead["scores"].append((e.position, ev.score, ev.grade, ev.model_version))
            continue
        profile = profile_of(e)
        if profile.get("source") is not None:
            lead["source"] = str(profile["source"])
        lead["engaged"] |= e.kind == "ActivityRecorded"
        if e.kind in OUTCOMES:
            lead["outcomes"].append((e.position, e.kind))
    for lead in leads.values():
        lead["converted"] = bool(lead["outcomes"]) and lead["outcomes"][-1][1] == "LeadConverted"

    scored = [lead for lead in leads.values() if lead["scores"]]
    buckets = {lo: 0 for lo in range(0, 100, 10)}
    grades: dict[str, int] = {}
    for lead in scored:
        _pos, score, grade, _model = lead["scores"][-1]
        buckets[bucket_of(score, 10)] += 1
        grades[grade] = grades.get(grade, 0) + 1

    sources: dict[str | None, list[int]] = {}
    for lead in leads.values():
        counts = sources.setdefault(lead["source"], [0, 0])
        counts[0] += 1
        counts[1] += lead["converted"]

    bands = {lo: [0, 0] for lo in range(0, 100, 20)}
    for lead in leads.values():
        decided = lead["outcomes"][0][0] if lead["outcomes"] else math.inf
        before = [s for s in lead["scores"] if s[0] < decided]
        if before:
            bands[bucket_of(before[-1][1], 20)][0] += 1
            bands[bucket_of(before[-1][1], 20)][1] += lead["converted"]

    engaged = [lead for lead in leads.values() if lead["engaged"]]
    high = [lead for lead in engaged if any(s[1] >= HIGH for s in lead["scores"])]
    won = [lead for lead in high if lead["converted"]]
    steps = list(zip(("created", "engaged", "high_score", "converted"),
                     (len(leads), len(engaged), len(high), len(won)), strict=True))  # fmt: skip

    models: dict[str, dict[str, Any]] = {}
    for lead_id, lead in leads.items():
        for _pos, score, _grade, version in lead["scores"]:
            m = models.setdefault(version, {"scores": [], "leads": set(), "high": set()})
            m["scores"].append(score)
            m["leads"].add(lead_id)
            if score >= HIGH:
                m["high"].add(lead_id)

    return {
        "score_distribution": {
            "org_id": org, "bucket": 10, "leads": len(scored),
            "buckets": [{"from": lo, "to": lo + 10, "count": n} for lo, n in buckets.items()],
            "grades": [{"grade": g, "count": grades[g]} for g in sorted(grades)],
        },
        "conversion_by_source": [
            {"source": s, "leads": n, "converted": c, "rate": rate(c, n)}
            for s, (n, c) in sorted(
                sources.items(), key=lambda kv: (-kv[1][0], kv[0] is None, kv[0] or "")
            )
        ],
        "conversion_by_score_band": [
            {"from": lo, "to": lo + 20, "leads": n, "converted": c, "rate": rate(c, n)}
            for lo, (n, c) in bands.items()
        ],
        "funnel": [
            {"step": step, "leads": n,
             "step_rate": rate(n, steps[i - 1][1]) if i else None,
             "overall_rate": rate(n, steps[0][1])}
            for i, (step, n) in enumerate(steps)
        ],
        "model_comparison": [
            {"model_version": v, "scores": len(m["scores"]), "leads": len(m["leads"]),
             "mean_score": sum(m["scores"]) / len(m["scores"]),
             "high_leads": len(m["high"]),
             "high_converted": sum(leads[lid]["converted"] for lid in m["high"]),
             "high_conversion_rate": rate(
                 sum(leads[lid]["converted"] for lid in m["high"]), len(m["high"]))}
            for v, m in sorted(models.items())
        ],
    }  # fmt: skip


# -- what the read model answers ---------------------------------------------------


async def answers(client: Client, org: str) -> dict[str, Any]:
    a = Analytics(client)
    return {
        "score_distribution": await a.score_distribution(org),
        "conversion_by_source": await a.conversion_by_source(org),
        "conversion_by_score_band": await a.conversion_by_score_band(org),
        "funnel": await a.funnel(org),
        "model_comparison": await a.model_comparison(org),
    }


async def snapshot(client: Client) -> dict[str, Any]:
    """Both tables in full and every answer for every org: what convergence must preserve."""
    tables = {
        t: client.query(f"SELECT * FROM {t} ORDER BY position").result_rows
        for t in ("lead_events", "score_history")
    }
    out: dict[str, Any] = {"tables": tables}
    for org in ORGS:
        got = await answers(client, org)
        for m in got["model_comparison"]:  # float sums may run in any order
            m["mean_score"] = round(m["mean_score"], 9)
        out[org] = got
    return out


# -- tests -------------------------------------------------------------------------


async def test_facts_and_analytics_match_the_event_store(pool: asyncpg.Pool, ch: Client) -> None:
    proj = ClickHouseProjection(ch)
    await proj.setup()
    entries = await read_log(pool)
    assert await ProjectionRunner(pool, [proj], batch_size=150).catch_up(proj) == len(entries)
    assert await proj.position() == entries[-1].position

    facts = [e for e in entries if e.kind != "LeadScored"]
    scores = [e for e in entries if e.kind == "LeadScored"]
    got_events = ch.query(
        "SELECT position, org_id, lead_id, kind, activity_kind, "
        "toUnixTimestamp64Milli(occurred_at), source FROM lead_events ORDER BY position"
    ).result_rows
    assert got_events == [
        (e.position, e.event.org_id, e.event.lead_id, e.kind,
         str(e.event.kind) if e.kind == "ActivityRecorded" else None,
         round(event_time(e).timestamp() * 1000), profile_of(e).get("source"))
        for e in facts
    ]  # fmt: skip
    got_scores = ch.query(
        "SELECT position, org_id, lead_id, score, previous_score, grade, model_version, "
        "caused_by_event_id FROM score_history ORDER BY position"
    ).result_rows
    assert got_scores == [
        (e.position, e.event.org_id, e.event.lead_id, e.event.score, e.event.previous_score,
         e.event.grade, e.event.model_version, e.event.caused_by_event_id)
        for e in scores
    ]  # fmt: skip

    for org in ORGS:
        want, got = expected(entries, org), await answers(ch, org)
        for w, g in zip(want["model_comparison"], got["model_comparison"], strict=True):
            assert g.pop("mean_score") == pytest.approx(w.pop("mean_score"))
        assert got == want
        # The history exercises what the answers distinguish.
        assert {m["model_version"] for m in got["model_comparison"]} == {"test-1", "test-2"}
        assert [s["leads"] > 0 for s in got["funnel"]] == [True] * 4

    # Isolation: the shared lead id is counted once per org, with that org's fate only.
    a, b = [await answers(ch, org) for org in ORGS]
    assert a["funnel"][0]["leads"] + b["funnel"][0]["leads"] == len(
        {(e.event.org_id, e.event.lead_id) for e in facts}
    )
    assert any(s["source"] == "ads" for s in b["conversion_by_source"])
    assert not any(s["source"] == "ads" for s in a["conversion_by_source"])
    nobody = await answers(ch, "org-without-data' OR 1=1 --")
    assert nobody["score_distribution"]["leads"] == 0 and nobody["conversion_by_source"] == []
    assert nobody["funnel"][0]["leads"] == 0 and nobody["model_comparison"] == []


class CrashBeforePosition(ClickHouseProjection):
    """Dies once, after a batch's rows are inserted and before its position is saved."""

    def __init__(self, client: Client, after: int) -> None:
        super().__init__(client)
        self.after, self.crashed = after, False

    def _save_position(self, position: int) -> None:
        if position > self.after and not self.crashed:
            self.crashed = True
            raise RuntimeError("simulated crash")
        super()._save_position(position)


def beyond(client: Client, position: int) -> int:
    return sum(
        client.query(f"SELECT count() FROM {t} WHERE position > {position}").result_rows[0][0]
        for t in ("lead_events", "score_history")
    )


async def test_restarts_redeliveries_and_rebuilds_converge(pool: asyncpg.Pool, ch: Client) -> None:
    entries = await read_log(pool)
    reader = LogReader(pool)
    mid = entries[len(entries) // 2].position
    proj = ClickHouseProjection(ch)
    runner = ProjectionRunner(pool, [proj], batch_size=100)

    # (a) normal processing, with analytics reading through the same client meanwhile
    await proj.setup()
    await asyncio.gather(runner.catch_up(proj), *(answers(ch, org) for org in ORGS))
    normal = await snapshot(ch)

    # (b) rebuild from 0
    assert await runner.rebuild(proj) == len(entries)
    assert await snapshot(ch) == normal

    # (c) a crash mid-way, then a restarted projection is re-delivered overlapping entries
    await proj.reset()
    crashing = CrashBeforePosition(ch, after=mid)
    await crashing.setup()
    await runner.catch_up(crashing, until=mid)
    with pytest.raises(RuntimeError, match="simulated crash"):
        await crashing.project(await reader.read(mid, 80))
    assert beyond(ch, mid) > 0  # the crash left rows past the recorded position
    restarted = ClickHouseProjection(ch)
    assert await restarted.position() == mid
    # Reading the position never deletes (a reader may run beside the writer's insert);
    # the writer cleans up before its first write.
    assert beyond(ch, mid) > 0
    await restarted.project(await reader.read(mid // 2, 120))  # from an earlier position
    await restarted.project(await reader.read(mid // 3, 60))  # wholly below: changes nothing
    await runner.catch_up(restarted)
    assert await snapshot(ch) == normal

    # (d) the same object retries after its failure, without a restart
    await proj.reset()
    retrying = CrashBeforePosition(ch, after=mid)
    await retrying.setup()
    with pytest.raises(RuntimeError, match="simulated crash"):
        await runner.catch_up(retrying)
    await runner.catch_up(retrying)
    assert await retrying.position() == entries[-1].position
    assert await snapshot(ch) == normal


def test_a_second_process_on_the_same_chdb_directory_is_told_who_owns_it(tmp_path: Path) -> None:
    dsn = f"chdb://{tmp_path / 'chdb'}"
    owner = connect(dsn)
    try:
        # Within one process, more clients on the same directory share the one engine.
        again = connect(dsn)
        again.command("CREATE TABLE t (x UInt8) ENGINE = MergeTree ORDER BY x")
        again.close()
        assert owner.query("EXISTS TABLE t").result_rows == [(1,)]

        script = textwrap.dedent(f"""
            from projections.clickhouse import ClickHouseLockedError, connect
            try:
                connect({dsn!r})
            except ClickHouseLockedError as exc:
                print("LOCKED", exc)
            """)
        done = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("LOCKED"), done.stdout + done.stderr
        assert "API process" in done.stdout and "ClickHouse server" in done.stdout
    finally:
        owner.close()
