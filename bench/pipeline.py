"""End-to-end throughput: lead-events/s from Kafka to every score stored, published, projected.

The workload (``devtools.workload.generate``; default 1,000,000 events over 100,000
leads in 20 orgs) is produced ahead of the runs to a topic of its own. Each run starts a
``leadscore worker`` process with a fresh database, consumer group, score-events topic,
Redis prefix and chDB directory, plus ``leadscore projections run clickhouse`` (embedded
chDB lives outside the worker), and times from the worker's first stored batch until
every event is applied, every stored score is on score-events (the relay's count
reaches the scores recorded) and all three read models reached the event store's head.

Peers, on the same topic and broker, in the same run (bench/peers.py): (a) a plain Faust
agent that decodes each event and forwards it, one at a time; (b) a raw confluent-kafka
consume -> produce loop; (c) Kafka's own producer and consumer perf tools. Ours and (a)
are run back to back, and their ratio is taken per pair (target >= 2x).

The worker's RSS is sampled during each run (memory), and one more run is sampled by
py-spy (where time goes; bench/profile.py).

Sizes: LEADSCORE_BENCH_EVENTS, LEADSCORE_BENCH_LEADS, LEADSCORE_BENCH_ORGS; runs:
LEADSCORE_BENCH_RUNS; LEADSCORE_BENCH_PROFILE=0 skips the profiled run,
LEADSCORE_BENCH_PERF_TOOLS=0 skips (c).
"""

from __future__ import annotations

import json
import secrets
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from adapters.settings import Settings
from bench import cpu, stack
from bench import profile as profiling
from bench.harness import RUNS, Spread, paired_ratio, ratio, write_results
from devtools import services
from devtools.workload import generate

log = structlog.get_logger(__name__)
console = Console()

EVENTS = stack.env_int("LEADSCORE_BENCH_EVENTS", 1_000_000)
LEADS = stack.env_int("LEADSCORE_BENCH_LEADS", 100_000)
ORGS = stack.env_int("LEADSCORE_BENCH_ORGS", 20)
PROFILE = stack.env_int("LEADSCORE_BENCH_PROFILE", 1)
PERF_TOOLS = stack.env_int("LEADSCORE_BENCH_PERF_TOOLS", 1)
POLL = 0.25
PROJECTIONS = ("postgres", "redis", "clickhouse")
LOCK_KEYS = ("lock_held_s", "lock_wait_s", "saves")
WORKERS = stack.WORKERS


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), console=console, transient=True,
    )  # fmt: skip


def timeout_for(events: int) -> float:
    return 300 + events / 300  # generous: a stalled run fails instead of hanging


@dataclass
class Workload:
    topic: str
    events: int
    leads: int
    orgs: list[str]
    mean_bytes: float


def prepare(base: Settings, events: int, leads: int, orgs: int, seed: int = 7) -> Workload:
    """Generate, encode and produce the workload to a topic of its own."""
    topic = f"lead-events-bench-{secrets.token_hex(3)}"
    services.ensure_topics(base.kafka, [topic], base.topic_partitions)
    with progress_bar() as progress:
        task = progress.add_task("generating the workload", total=events)
        workload = []
        for i, ev in enumerate(generate(orgs, leads, events, seed=seed)):
            workload.append(ev)
            if i % 10_000 == 0:
                progress.update(task, completed=i)
        progress.update(task, completed=events, description="encoding")
        messages = stack.encoded(base, workload)
        task = progress.add_task(f"producing to {topic}", total=len(messages))
        stack.produce_ahead(base, topic, messages, lambda n: progress.update(task, completed=n))
    org_ids = sorted({e.org_id for e in workload})
    mean = statistics.fmean(len(v) for _k, v in messages)
    n_leads = len({(e.org_id, e.lead_id) for e in workload})
    del workload, messages
    return Workload(topic, events, n_leads, org_ids, mean)


@dataclass
class Run:
    rate: float
    seconds: float
    startup: float  # worker process start -> first stored batch
    peak_rss_mib: float
    scored: int
    published: int
    rss: list[tuple[int, float]] = field(default_factory=list)  # (events applied, RSS MiB)
    profile: str = ""
    done_after: dict[str, float] = field(default_factory=dict)  # milestone -> seconds
    cpu: dict[str, float] = field(default_factory=dict)  # group -> CPU seconds in the window
    # The event store's write lock in the window, all workers: seconds held, seconds
    # waited, saves (streams/metrics.py STORE_LOCK_*)
    lock: dict[str, float] = field(default_factory=dict)


def run_ours(
    base: Settings, wl: Workload, *, workers: int | None = None, profile_to: Path | None = None
) -> Run:
    """One run of the engine over ``wl`` with ``workers`` worker processes (WORKERS)."""
    s = stack.engine_settings(stack.isolated(base, "pipe", wl.topic))
    logs = base.run_path / "logs" / "bench"
    stack.register_orgs(s, wl.orgs)
    positions = stack.LogPositions(s.pg_dsn)
    launched = time.monotonic()
    procs, ports = stack.start_workers(s, logs, "pipeline", workers or WORKERS)
    worker = procs[0]  # its RSS is sampled and it is the one profiled
    clickhouse = stack.start_clickhouse_projection(s, logs / "pipeline-clickhouse.log")
    outbox = stack.start_outbox(s, logs, "pipeline")
    named = {w.pid: "worker" for w in procs}
    named[clickhouse.pid] = "ClickHouse projection"
    # the split topology's relay and projections (none with "single")
    named.update(zip((p.pid for p in outbox), stack.OUTBOX_NAMES, strict=False))
    cpu_start: cpu.Snapshot | None = None
    cpu_spent: dict[str, float] = {}
    lock_start: dict[str, float] = {}
    lock: dict[str, float] = {}
    spy = None
    timeline = stack.Timeline()
    milestones: dict[str, float] = {}
    head = last_score = received = 0
    behind: list[str] = []
    try:
        deadline = launched + timeout_for(wl.events)
        with progress_bar() as progress:
            task = progress.add_task("leadscore worker: events applied", total=wl.events)
            while True:
                for w in procs:
                    if w.poll() is not None:
                        raise RuntimeError(f"worker exited with {w.returncode}; see {logs}")
                if time.monotonic() > deadline:
                    waiting = behind if milestones else ["the worker's events"]
                    raise TimeoutError(
                        f"run not finished in {timeout_for(wl.events):.0f} s: the worker had "
                        f"received {received:,} of {wl.events:,} lead-events, still waiting "
                        f"for {', '.join(waiting)}; see {logs}"
                    )
                m = stack.scrape_sum(ports)
                now = time.monotonic()
                received = int(m["received"])
                rss, _hwm = stack.rss_kib(worker.pid)
                if received and not timeline.started:
                    timeline.started, timeline.first_count = now, received
                    cpu_start = cpu.snapshot()
                    lock_start = {k: m[k] for k in LOCK_KEYS}
                timeline.samples.append((now, received, rss))
                progress.update(task, completed=received)
                if received >= wl.events:
                    if "applied" not in milestones:  # nothing is stored after this
                        milestones["applied"] = now
                        head, last_score = positions.head(), positions.last_score()
                    if positions.published(s.topic_score_events) >= last_score:
                        milestones.setdefault("published", now)
                    reported = positions.projections()
                    for name in PROJECTIONS:
                        if reported.get(name, -1) >= head:
                            milestones.setdefault(name, now)
                    behind = [n for n in ("published", *PROJECTIONS) if n not in milestones]
                    progress.update(task, description=f"waiting for {', '.join(behind)}")
                    if not behind:
                        timeline.ended = now
                        if cpu_start is not None:
                            cpu_spent = cpu.spent(cpu_start, cpu.snapshot(), named)
                        lock = {k: m[k] - lock_start.get(k, 0.0) for k in LOCK_KEYS}
                        break
                if spy is None and profile_to is not None and received:
                    spy = profiling.record(worker.pid, profile_to)  # after start-up
                time.sleep(POLL)
        if timeline.first_count > wl.events // 2:
            # The window opens at the first poll that sees work; if most of it was done by
            # then, rate and CPU per event would describe the tail of the run, not the run.
            raise RuntimeError(
                f"{timeline.first_count:,} of {wl.events:,} lead-events were applied before "
                f"the first poll ({POLL} s): too few to measure; run a larger workload"
            )
        scored = positions.scores()
        on_topic = stack.topic_count(s.kafka, s.topic_score_events, s.topic_partitions)
        if m["dead_lettered"]:
            log.warning("dead letters in a benchmark run", count=m["dead_lettered"])
        _rss, hwm = stack.rss_kib(worker.pid)
    finally:
        if spy is not None:
            profiling.stop(spy)
        positions.close()
        stack.stop_process(clickhouse)
        for proc in outbox:
            stack.stop_process(proc)
        for w in procs:
            stack.stop_process(w)
        stack.cleanup(base, s)
    return Run(
        rate=timeline.rate(wl.events),
        seconds=timeline.ended - timeline.started,
        startup=timeline.started - launched,
        peak_rss_mib=hwm / 1024,
        scored=scored,
        done_after={k: v - timeline.started for k, v in milestones.items()},
        cpu=cpu_spent,
        lock=lock,
        published=on_topic,
        rss=[(n, kib / 1024) for _t, n, kib in timeline.samples],
        profile=profile_to.read_text() if profile_to and profile_to.exists() else "",
    )


def run_peer(base: Settings, wl: Workload, kind: str) -> float:
    """events/s of peer ``kind`` ("faust" or "raw") forwarding the workload to a sink topic."""
    tag = secrets.token_hex(3)
    sink, group = f"bench-{kind}-sink-{tag}", f"bench-{kind}-{tag}"
    services.ensure_topics(base.kafka, [sink], base.topic_partitions)
    # The Faust agent runs in as many processes as our workers (one group), the raw loop in one.
    procs = [
        stack.start_process(
            ["-m", "bench.peers", kind, wl.topic, sink, group, str(base.topic_partitions)],
            base,
            base.run_path / "logs" / "bench" / f"peer-{kind}-{i}.log",
        )
        for i in range(WORKERS if kind == "faust" else 1)
    ]
    marks = stack.Watermarks(base.kafka, sink, base.topic_partitions)
    timeline = stack.Timeline()
    deadline = time.monotonic() + timeout_for(wl.events)
    try:
        with progress_bar() as progress:
            task = progress.add_task(f"peer {kind}: events forwarded", total=wl.events)
            while True:
                for proc in procs:
                    if proc.poll() is not None:
                        raise RuntimeError(f"peer {kind} exited with {proc.returncode}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"peer {kind} did not forward every event in time")
                n = marks.count()
                now = time.monotonic()
                if n and not timeline.started:
                    timeline.started, timeline.first_count = now, n
                progress.update(task, completed=n)
                if n >= wl.events:
                    timeline.ended = now
                    break
                time.sleep(POLL / 2)
        span = stack.produce_span(base.kafka, sink, base.topic_partitions)
    finally:
        marks.close()
        for proc in procs:
            stack.stop_process(proc)
        stack.delete_topics(base.kafka, [sink])
    # From the first to the last message the peer wrote (their timestamps): exact even
    # when the peer forwards everything between two polls of the watermarks.
    return (wl.events - 1) / span if span > 0 else timeline.rate(wl.events)


def run_faust_take(base: Settings, wl: Workload, *, direct: bool) -> tuple[float, float]:
    """(events/s, CPU µs per event) of peer (a0), a Faust agent taking batches, doing nothing,
    on Faust's own consumer loop or (``direct``) on the worker's."""
    tag = secrets.token_hex(3)
    kind = "faust-take-direct" if direct else "faust-take"
    out = base.run_path / "logs" / "bench" / f"peer-{kind}-{tag}.json"
    args = [wl.topic, f"bench-{kind}-{tag}", str(base.topic_partitions), str(wl.events)]
    proc = stack.start_process(
        ["-m", "bench.peers", kind, *args, str(out)],
        stack.engine_settings(base),
        base.run_path / "logs" / "bench" / f"peer-{kind}.log",
    )
    try:
        proc.wait(timeout_for(wl.events))
        result = json.loads(out.read_text())
    finally:
        stack.stop_process(proc)
        out.unlink(missing_ok=True)
    return result["events"] / result["seconds"], result["cpu_seconds"] / result["events"] * 1e6


def perf_tools(base: Settings, wl: Workload) -> tuple[float, float]:
    """(producer records/s, consumer messages/s) of Kafka's own tools, same size/count."""
    from bench.peers import consumer_perf, producer_perf

    scratch = f"bench-perf-{secrets.token_hex(3)}"
    services.ensure_topics(base.kafka, [scratch], base.topic_partitions)
    try:
        produced = producer_perf(base, scratch, wl.events, round(wl.mean_bytes))
    finally:
        stack.delete_topics(base.kafka, [scratch])
    return produced, consumer_perf(base, wl.topic, wl.events)


def rss_at(run: Run, fraction: float, total: int) -> float:
    """RSS (MiB) when the worker had taken ``fraction`` of the events."""
    for n, mib in run.rss:
        if n >= fraction * total:
            return mib
    return run.rss[-1][1] if run.rss else float("nan")


def measure(
    base: Settings, wl: Workload, runs: int, *, profile: bool, perf: bool
) -> dict[str, Any]:
    ours: list[Run] = []
    take_rates: list[float] = []
    take_cpu: list[float] = []
    direct_rates: list[float] = []
    direct_cpu: list[float] = []
    faust_rates: list[float] = []
    raw_rates: list[float] = []
    producer_rates: list[float] = []
    consumer_rates: list[float] = []
    for i in range(runs):
        console.print(f"run {i + 1}/{runs}")
        ours.append(run_ours(base, wl))
        rate, cpu_us = run_faust_take(base, wl, direct=False)
        take_rates.append(rate)
        take_cpu.append(cpu_us)
        rate, cpu_us = run_faust_take(base, wl, direct=True)
        direct_rates.append(rate)
        direct_cpu.append(cpu_us)
        faust_rates.append(run_peer(base, wl, "faust"))
        raw_rates.append(run_peer(base, wl, "raw"))
        if perf:
            p, c = perf_tools(base, wl)
            producer_rates.append(p)
            consumer_rates.append(c)
        console.print(
            f"  ours {ours[-1].rate:,.0f}/s, Faust batches doing nothing {take_rates[-1]:,.0f}/s "
            f"(direct delivery {direct_rates[-1]:,.0f}/s), "
            f"Faust agent {faust_rates[-1]:,.0f}/s, "
            f"raw loop {raw_rates[-1]:,.0f}/s"
            + (
                f", Kafka tools {producer_rates[-1]:,.0f}/{consumer_rates[-1]:,.0f}/s"
                if perf
                else ""
            )
        )
    profiled = None
    if profile:
        console.print("one more run, sampled by py-spy")
        out = base.run_path / "logs" / "bench" / f"pipeline-pyspy-{secrets.token_hex(3)}.txt"
        profiled = run_ours(base, wl, profile_to=out)
    return {
        "ours": ours,
        "faust_take": take_rates,
        "faust_take_cpu": take_cpu,
        "faust_direct": direct_rates,
        "faust_direct_cpu": direct_cpu,
        "batch_size": base.batch_size,
        "faust": faust_rates,
        "raw": raw_rates,
        "producer": producer_rates,
        "consumer": consumer_rates,
        "profiled": profiled,
    }


def report(wl: Workload, r: dict[str, Any], runs: int) -> str:
    ours: list[Run] = r["ours"]
    rates = [x.rate for x in ours]
    mine = Spread.of(rates)
    vs_faust = paired_ratio(rates, r["faust"])
    vs_raw = paired_ratio(rates, r["raw"])
    vs_take = paired_ratio(rates, r["faust_take"])
    take_cpu = statistics.median(r["faust_take_cpu"])
    vs_direct = paired_ratio(rates, r["faust_direct"])
    direct_cpu = statistics.median(r["faust_direct_cpu"])
    lines = [
        f"Workload: {wl.events:,} lead-events over {wl.leads:,} leads in {len(wl.orgs)} orgs "
        f"(devtools.workload, seed 7), {wl.mean_bytes:.0f} bytes per message on average, "
        f"produced ahead to one topic of 6 partitions; every figure below read that topic. "
        f"Engine topology: {stack.TOPOLOGY_TEXT} (LEADSCORE_BENCH_TOPOLOGY={stack.TOPOLOGY}), "
        f"plus the ClickHouse projection; {WORKERS} worker process(es) in one consumer group "
        f"(LEADSCORE_BENCH_WORKERS), and the Faust agent (a) in as many.\n",
        "| pipeline | lead-events/s | ours / it (paired runs) |",
        "|---|---|---|",
        f"| **leadscore worker**: decode, event store, scoring, explanations, score-events, "
        f"PostgreSQL + Redis + ClickHouse read models | **{mine}** | — |",
        f"| (a0) Faust agent taking batches of {r['batch_size']:,} (as the worker does), doing "
        f"nothing, one process, Faust's consumer loop: {take_cpu:,.0f} µs of CPU per event | "
        f"{Spread.of(r['faust_take'])} | "
        f"{vs_take.median:.2f} ({vs_take.low:.2f}–{vs_take.high:.2f}) |",
        f"| (a0) the same on the worker's consumer loop (direct delivery, streams/consumer.py): "
        f"{direct_cpu:,.0f} µs of CPU per event | {Spread.of(r['faust_direct'])} | "
        f"{vs_direct.median:.2f} ({vs_direct.low:.2f}–{vs_direct.high:.2f}) |",
        f"| (a) Faust agent: decode each event, forward it, one at a time | "
        f"{Spread.of(r['faust'])} | **{vs_faust.median:.2f}** "
        f"({vs_faust.low:.2f}–{vs_faust.high:.2f}) |",
        f"| (b) confluent-kafka consume → produce loop, no processing | {Spread.of(r['raw'])} | "
        f"{vs_raw.median:.2f} ({vs_raw.low:.2f}–{vs_raw.high:.2f}) |",
    ]  # fmt: skip
    if r["producer"]:
        prod, cons = Spread.of(r["producer"]), Spread.of(r["consumer"])
        lines += [
            f"| (c) kafka-producer-perf-test (acks=all, lz4), same count and size | "
            f"{prod} | {ratio(mine, prod):.3f} |",
            f"| (c) kafka-consumer-perf-test over the workload topic | "
            f"{cons} | {ratio(mine, cons):.3f} |",
        ]
    target = "met" if mine.median >= 10_000 else "not met"
    ratio_target = "met" if vs_faust.median >= 2 else "not met"
    lines += [
        "",
        f"Targets: >= 10,000 lead-events/s end to end: {target} ({mine.median:,.0f}); "
        f">= 2x the Faust agent (a): {ratio_target} ({vs_faust.median:.2f}x).",
        "",
        "Ours is timed from the worker's first stored batch (its start-up, Faust joining the "
        "group, is left out and shown below) until every event is applied, the relay's "
        "position has reached the last stored score, and the PostgreSQL, Redis "
        "and ClickHouse read models report the event store's head; peers (a) and (b) from "
        "the first to the last message they wrote to their sink topic (the messages' "
        "timestamps). score-events outnumber stored scores: each score is one "
        "lead.score.updated plus its typed events (qualified, grade changed, ...). Decay timer "
        "off; the repository's scoring rules on; orgs registered.",
        "",
        "| per run | " + " | ".join(f"run {i + 1}" for i in range(len(ours))) + " |",
        "|---|" + "---|" * len(ours),
        "| lead-events/s | " + " | ".join(f"{x.rate:,.0f}" for x in ours) + " |",
        "| seconds | " + " | ".join(f"{x.seconds:,.1f}" for x in ours) + " |",
        "| worker start-up, s | " + " | ".join(f"{x.startup:,.1f}" for x in ours) + " |",
        "| all applied / published / PostgreSQL / Redis / ClickHouse projected after, s | "
        + " | ".join(
            " / ".join(
                f"{x.done_after.get(k, float('nan')):.1f}"
                for k in ("applied", "published", *PROJECTIONS)
            )
            for x in ours
        )
        + " |",
        "| scores stored / score-events on the topic | "
        + " | ".join(f"{x.scored:,} / {x.published:,}" for x in ours)
        + " |",
        "| worker peak RSS (VmHWM), MiB | "
        + " | ".join(f"{x.peak_rss_mib:,.0f}" for x in ours)
        + " |",
        "| worker RSS at 25% / 50% / 100% of the events, MiB | "
        + " | ".join(
            f"{rss_at(x, 0.25, wl.events):,.0f} / {rss_at(x, 0.5, wl.events):,.0f} / "
            f"{rss_at(x, 1.0, wl.events):,.0f}"
            for x in ours
        )
        + " |",
    ]
    lines += cpu_table(ours, wl.events)
    profiled: Run | None = r["profiled"]
    if profiled is not None:
        lines += [
            "",
            f"### Where the time goes (py-spy, one more run at {profiled.rate:,.0f} events/s)",
            "",
            profiling.summarise(profiled.profile, seconds=profiled.seconds),
        ]
    return "\n".join(lines)


CPU_ORDER = (
    "worker",
    "relay",
    "PostgreSQL + Redis projections",
    "ClickHouse projection",
    "PostgreSQL",
    "Kafka broker",
    "Redis",
    "kernel threads",
    "other processes",
)


def cpu_table(ours: list[Run], events: int) -> list[str]:
    """CPU microseconds per lead-event by process group (medians over the runs)."""
    runs = [x for x in ours if x.cpu]
    if not runs:
        return []

    def per_event(x: Run, group: str) -> float:
        return x.cpu.get(group, 0.0) / events * 1e6

    total = statistics.median(per_event(x, "all (machine)") for x in runs)
    rows = []
    for group in CPU_ORDER:
        us = statistics.median(per_event(x, group) for x in runs)
        rows.append(f"| {group} | {us:,.0f} | {us / total:.0%} |")
    idle = statistics.median(cpu.idle_share(x.cpu) for x in runs)
    return [
        "",
        "Where the machine's CPU went during ours (bench/cpu.py: /proc CPU times from the "
        "first stored batch to the end; medians of the runs). On this machine the sum is the "
        "bound: 2 cores ÷ (CPU per event) is the most the whole stack can do, whichever "
        "process is busiest.",
        "",
        "| process group | CPU µs per lead-event | share |",
        "|---|---|---|",
        *rows,
        f"| **all, whole machine** | **{total:,.0f}** | idle {idle:.0%} of the cores |",
        "",
        f"At {total:,.0f} µs per lead-event the two cores allow at most "
        f"{2e6 / total:,.0f} lead-events/s; 10,000/s needs 200 µs.",
    ]


def bench(
    base: Settings, events: int, leads: int, orgs: int, runs: int, *, profile: bool, perf: bool
) -> str:
    """Produce the workload, run ours and the peers ``runs`` times; the results body."""
    console.rule(f"[bold]pipeline: {events:,} events, {leads:,} leads, {orgs} orgs")
    wl = prepare(base, events, leads, orgs)
    try:
        results = measure(base, wl, runs, profile=profile, perf=perf)
    finally:
        stack.delete_topics(base.kafka, [wl.topic])
    return report(wl, results, runs)


def main() -> None:
    base = stack.base_settings()
    body = bench(base, EVENTS, LEADS, ORGS, RUNS, profile=bool(PROFILE), perf=bool(PERF_TOOLS))
    console.print(body)
    console.print(f"written to {write_results('pipeline', body)}")


if __name__ == "__main__":
    main()
