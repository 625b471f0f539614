"""`make demo`: a worker, a workload, every lead scored, and what happened."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import asyncpg
from confluent_kafka import Consumer, TopicPartition
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from adapters import tenancy
from adapters.eventstore import open_store
from adapters.settings import Settings
from adapters.topics import ensure_engine_topics
from devtools.engine_processes import (
    start_api,
    start_worker,
    stop_api,
    stop_worker,
    wait_for_group,
    wait_http,
)
from devtools.workload import generate
from domain.events import LeadEvent
from domain.lead import lead_aggregate_id
from domain.transitions import DISQUALIFIED, GRADE_CHANGED, QUALIFIED, SCORE_UPDATED
from streams.producer import ProduceReport, produce_events, warm_up
from streams.relay import kafka_producer
from streams.wire import LEAD_EVENT_SCHEMA, AvroTopic, SchemaCatalog


class ScoreEventTail:
    """Reads score-events produced from now on, decoding and timing each one."""

    def __init__(self, settings: Settings, catalog: SchemaCatalog) -> None:
        self.catalog = catalog
        self.consumer = Consumer(
            {
                **settings.kafka,
                "group.id": f"leadscore-demo-{secrets.token_hex(4)}",
                "enable.auto.commit": False,
            }
        )
        topic = settings.topic_score_events
        meta = self.consumer.list_topics(topic, timeout=10).topics[topic]
        # Explicit assignment at the current end: nothing produced after now is missed.
        parts = []
        for p in meta.partitions:
            _low, high = self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            parts.append(TopicPartition(topic, p, high))
        self.consumer.assign(parts)
        self.received: list[tuple[float, dict[str, Any]]] = []

    def poll(self, seconds: float) -> None:
        """Take score-events for ``seconds``, each timed when it arrives: one at a time, as
        ``consume(n, timeout)`` would hold a message until n came or the timeout passed
        (up to 100 ms were added to the demo's latency that way)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            msg = self.consumer.poll(0.05)
            if msg is None or msg.error():
                continue
            self.received.append((time.time(), self.catalog.decode(msg.value())))

    def close(self) -> None:
        self.consumer.close()


def tagged(events: Iterator[LeadEvent], run: str) -> Iterator[LeadEvent]:
    """Give this run's leads their own ids, so demo runs never merge different people."""
    for ev in events:
        yield dataclasses.replace(ev, lead_id=f"{ev.lead_id}-{run}")


def run_demo(
    settings: Settings,
    console: Console,
    *,
    orgs: int,
    leads: int,
    events: int,
    rate: float,
    timeout: float,
) -> bool:
    s = settings
    ensure_engine_topics(s)
    catalog = SchemaCatalog.from_settings(s)
    encoder = AvroTopic(catalog, s.topic_lead_events, LEAD_EVENT_SCHEMA)
    run = secrets.token_hex(3)
    workload = list(tagged(generate(orgs, leads, events, seed=int(run, 16)), run))
    last_event = {(e.org_id, e.lead_id): e.event_id for e in workload}
    console.rule(f"[bold]demo run {run}")
    console.print(
        f"{len(workload):,} lead-events over {len(last_event):,} leads in {orgs} orgs, "
        f"offered at {rate:,.0f} events/s"
    )

    orgs = sorted({org for org, _ in last_event})
    # Lead-events of unregistered orgs are dead-lettered: register the demo's first.
    asyncio.run(
        tenancy.with_connection(
            s.pg_dsn, lambda db: tenancy.ensure_orgs(db, orgs, plan_type="demo")
        )
    )
    log_path = s.run_path / "logs" / "worker-demo.log"
    worker = start_worker(s, log_path)
    tail = ScoreEventTail(s, catalog)
    try:
        with console.status("starting the worker (Faust joins its consumer group)"):
            wait_for_group(s, worker, timeout=120)
        console.print(f"worker up (pid {worker.pid}, log {log_path})")

        report = ProduceReport()
        producer = warm_up(kafka_producer(s.kafka), s.topic_lead_events)

        def send() -> None:
            nonlocal report
            report = produce_events(
                producer,
                s.topic_lead_events,
                encoder,
                iter(workload),
                rate=rate,
                track_send_times=True,
            )

        sender = threading.Thread(target=send, name="demo-producer")
        started = time.monotonic()
        sender.start()
        scored_leads: set[str] = set()
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("leads scored", total=len(last_event))
            while time.monotonic() - started < timeout:
                tail.poll(0.5)
                scored_leads.update(r["lead_id"] for _, r in tail.received)
                progress.update(task, completed=len(scored_leads))
                if not sender.is_alive() and len(scored_leads) >= len(last_event):
                    break
        sender.join()
        done = _settled(s, tail, last_event, timeout - (time.monotonic() - started))
        elapsed = time.monotonic() - started
    finally:
        tail.close()
        stop_worker(worker)

    _summarise(console, s, report, tail.received, last_event, elapsed)
    if not done:
        console.print("[red]not every lead was scored in time; see " + str(log_path))
        return False
    return _serve(console, s, orgs, last_event)


def _serve(
    console: Console, s: Settings, orgs: list[str], last_event: dict[tuple[str, str], str]
) -> bool:
    """Leave the query API running with a key for the first org, and show how to use it."""
    key = asyncio.run(_demo_key(s, orgs))
    stop_api(s)
    api = start_api(s, s.run_path / "logs" / "api-demo.log")
    base = f"http://{s.api_host}:{s.api_port}"
    lead = next(lead for org, lead in sorted(last_event) if org == orgs[0])
    with console.status("starting the query API (it also builds the ClickHouse read model)"):
        ready = wait_http(f"{base}/health", api, timeout=120)
    if not ready:
        console.print(f"[red]the API did not come up; see {s.run_path / 'logs' / 'api-demo.log'}")
        return False
    console.rule("[bold]the query API is running")
    console.print(f"API {base} (pid {api.pid}); key for {orgs[0]}, shown once:")
    console.print(key, soft_wrap=True)
    console.print(
        f"[bold]Console:[/bold] open {base}/console and sign in with that key "
        "(leaderboard, each lead's score over time and why, funnel, models).",
        soft_wrap=True,
    )
    for path in (
        "/leaderboard?limit=5",
        f"/leads/{lead}",
        f"/leads/{lead}/scores?limit=3",
        f"/leads/{lead}/timeline",
        "/leads?min_score=80&limit=5",
        "/analytics/funnel",
        "/analytics/score-distribution",
        "/analytics/conversion-by-source",
        "/models",
        "/models/v1/drift",
        "/webhooks/deliveries?limit=5",
    ):
        console.print(f"  curl -s -H 'Authorization: Bearer {key}' '{base}{path}'", soft_wrap=True)
    console.print(f"  curl -s {base}/health     # no key needed; also /metrics, /openapi.json")
    console.print("`make down` stops the API and the services; `leadscore worker` scores more.")
    return True


async def _demo_key(s: Settings, orgs: list[str]) -> str:
    async def create(db: asyncpg.Connection) -> str:
        return (await tenancy.create_api_key(db, orgs[0], name="demo"))[1]

    return await tenancy.with_connection(s.pg_dsn, create)


def _settled(
    s: Settings, tail: ScoreEventTail, last_event: dict[tuple[str, str], str], budget: float
) -> bool:
    """Every lead holds its last event, and every stored score reached score-events."""
    store = open_store(s.pg_dsn, cache_size=0)
    ids = [lead_aggregate_id(org, lead) for org, lead in last_event]
    deadline = time.monotonic() + max(budget, 5)
    try:
        while time.monotonic() < deadline:
            leads = store.load(ids)
            applied = all(
                lead is not None
                and lead.knows_applied(last_event[(lead.org_id, lead.lead_id)]) is True
                for lead in leads.values()
            )
            expected = sum(lead.score_count for lead in leads.values() if lead is not None)
            tail.poll(0.5)
            got = {(r["lead_id"], r["position"]) for _, r in tail.received}
            if applied and len(got) >= expected:
                return True
        return False
    finally:
        store.close()


def _summarise(
    console: Console,
    s: Settings,
    report: ProduceReport,
    received: list[tuple[float, dict[str, Any]]],
    last_event: dict[tuple[str, str], str],
    elapsed: float,
) -> None:
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    latencies = []
    kinds = Counter(r["event_type"] for _at, r in received)
    for at, r in received:
        if r["event_type"] != SCORE_UPDATED:
            continue  # the same score again, as a qualification or grade change
        key = (r["org_id"], r["lead_id"])
        if key in last_event and r["position"] >= latest.get(key, {"position": -1})["position"]:
            latest[key] = r
        sent = report.sent_at.get(r["caused_by_event_id"])
        if sent is not None:
            latencies.append((at - sent) * 1000)

    summary = Table(title="what happened", show_header=False)
    summary.add_row("lead-events in", f"{report.sent:,} ({report.failed} failed to send)")
    summary.add_row("leads", f"{len(last_event):,}")
    summary.add_row("leads scored", f"{len(latest):,}")
    summary.add_row(
        "score-events out",
        f"{kinds[SCORE_UPDATED]:,} scores; {kinds[QUALIFIED]:,} qualified, "
        f"{kinds[DISQUALIFIED]:,} disqualified, {kinds[GRADE_CHANGED]:,} grade changes",
    )
    models = sorted({r["model_version"] for _, r in received})
    stages = Counter(r.get("stage") for r in latest.values() if r.get("stage"))
    if stages:
        summary.add_row(
            "stages now", ", ".join(f"{n:,} {stage}" for stage, n in sorted(stages.items()))
        )
    summary.add_row("model", ", ".join(models) or "-")
    summary.add_row("wall time", f"{elapsed:.1f}s")
    if latencies:
        q = statistics.quantiles(latencies, n=100)
        summary.add_row(
            "event -> score-event latency",
            f"p50 {statistics.median(latencies):.0f} ms, p99 {q[98]:.0f} ms "
            f"({len(latencies):,} samples)",
        )
    console.print(summary)

    store = open_store(s.pg_dsn, cache_size=0)
    try:
        best = sorted(latest.values(), key=lambda r: r["new_score"], reverse=True)[:10]
        profiles = store.load([lead_aggregate_id(r["org_id"], r["lead_id"]) for r in best])
    finally:
        store.close()
    top = Table(title="ten best leads")
    top.add_column("org", no_wrap=True)
    top.add_column("lead", no_wrap=True)
    top.add_column("title", overflow="ellipsis", no_wrap=True, max_width=26)
    top.add_column("company", overflow="ellipsis", no_wrap=True, max_width=18)
    for col in ("score", "grade", "stage", "fit", "eng."):
        top.add_column(col, justify="right", no_wrap=True)
    for r in best:
        lead = profiles[lead_aggregate_id(r["org_id"], r["lead_id"])]
        p = lead.profile if lead else {}
        top.add_row(
            r["org_id"],
            r["lead_id"],
            str(p.get("title", "")),
            str(p.get("company", "")),
            f"{r['new_score']:.1f}",
            r["grade"],
            r.get("stage") or "",
            f"{r['components']['fit']:.0f}",
            f"{r['components']['engagement']:.0f}",
        )
    console.print(top)
    reasons = Table(title="why they score (points against a lead we know nothing about)")
    reasons.add_column("lead", no_wrap=True)
    reasons.add_column("strongest factors", overflow="fold")
    for r in best:
        reasons.add_row(r["lead_id"], why(r["top_factors"]))
    console.print(reasons)


def why(factors: list[dict[str, Any]], most: int = 3) -> str:
    """The strongest factors of a score, as a salesperson reads them."""
    strongest = sorted(factors, key=lambda f: abs(f["contribution"]), reverse=True)[:most]
    return ", ".join(f"{f['label']} {f['contribution']:+.0f}" for f in strongest)
