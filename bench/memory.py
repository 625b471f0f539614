"""Memory: the worker's RSS after 100,000 and 1,000,000 leads, and whether it grows with
events once the leads are known.

For each size, a topic holds the LeadCreated events of that many leads first; for the
first size it then holds 2N more events of the same leads (activities, updates, outcomes
from the workload generator, in their order). One ``leadscore worker`` (the pipeline
bench's run: fresh database, every score published and projected) takes it all, and its
RSS (/proc/<pid>/status VmRSS, sampled every 0.25 s) is read when it had taken every
LeadCreated, then N and 2N more events; VmHWM is the peak. The aggregate cache is
bounded by LEADSCORE_AGGREGATE_CACHE_SIZE (shown).

Memory is a state, not a rate: one run per size.
Sizes: LEADSCORE_BENCH_MEMORY_LEADS ("100000,1000000"), LEADSCORE_BENCH_MEMORY_EVENTS (N,
200,000), LEADSCORE_BENCH_ORGS. To see whether a lead's state stops growing, give the first
size more events per lead than a Lead remembers ids (Lead.RECENT_EVENT_IDS), e.g.
LEADSCORE_BENCH_MEMORY_LEADS=20000 LEADSCORE_BENCH_MEMORY_EVENTS=200000 (10 and 20 per lead).
"""

from __future__ import annotations

import os
import secrets
import statistics

from rich.console import Console

from bench import stack
from bench.harness import write_results
from bench.pipeline import Run, Workload, progress_bar, run_ours
from domain.events import EventType
from domain.lead import Lead
from leadscore import services
from leadscore.settings import Settings
from leadscore.workload import generate

console = Console()
SIZES = [
    int(x.replace("_", ""))
    for x in os.environ.get("LEADSCORE_BENCH_MEMORY_LEADS", "100000,1000000").split(",")
]
GROWTH = stack.env_int("LEADSCORE_BENCH_MEMORY_EVENTS", 200_000)
ORGS = stack.env_int("LEADSCORE_BENCH_ORGS", 20)


def prepare(base: Settings, leads: int, more: int) -> Workload:
    """LeadCreated of ``leads`` leads, then ``more`` events of the same leads."""
    events = list(generate(ORGS, leads, leads + more, seed=31))
    created = [e for e in events if e.event_type == EventType.LEAD_CREATED]
    rest = [e for e in events if e.event_type != EventType.LEAD_CREATED]
    ordered = created + rest
    topic = f"lead-events-bench-mem-{secrets.token_hex(3)}"
    services.ensure_topics(base.kafka_bootstrap, [topic], base.topic_partitions)
    messages = stack.encoded(base, ordered)
    with progress_bar() as progress:
        task = progress.add_task(f"producing {len(messages):,} events", total=len(messages))
        stack.produce_ahead(base, topic, messages, lambda n: progress.update(task, completed=n))
    mean = statistics.fmean(len(v) for _k, v in messages)
    orgs = sorted({e.org_id for e in created})
    return Workload(topic, len(ordered), len(created), orgs, mean)


def rss_when(run: Run, taken: int) -> float:
    """RSS (MiB) at the first sample where the worker had taken ``taken`` events."""
    for n, mib in run.rss:
        if n >= taken:
            return mib
    return float("nan")


def main() -> None:
    base = stack.base_settings()
    lines = [
        f"Aggregate cache: LEADSCORE_AGGREGATE_CACHE_SIZE = {base.aggregate_cache_size:,} leads. "
        f"One run per size (a state, not a rate); one worker, the engine as {stack.TOPOLOGY_TEXT} "
        f"(LEADSCORE_BENCH_TOPOLOGY={stack.TOPOLOGY}).\n",
        "| leads | events taken | RSS after every lead is known, MiB | "
        f"after +{GROWTH:,} events (+{GROWTH / SIZES[0]:,.1f} per lead) | "
        f"after +{2 * GROWTH:,} events (+{2 * GROWTH / SIZES[0]:,.1f} per lead) | "
        "growth N → 2N, MiB | peak RSS (VmHWM), MiB | lead-events/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, leads in enumerate(SIZES):
        more = 2 * GROWTH if i == 0 else 0
        console.rule(f"[bold]memory: {leads:,} leads, then {more:,} events on them")
        wl = prepare(base, leads, more)
        try:
            run = run_ours(base, wl, workers=1)
        finally:
            stack.delete_topics(base.kafka_bootstrap, [wl.topic])
        known = rss_when(run, wl.leads)
        if more:
            at_n, at_2n = rss_when(run, wl.leads + GROWTH), rss_when(run, wl.events)
            cells = [f"{at_n:,.0f}", f"{at_2n:,.0f}", f"{at_2n - at_n:+,.0f}"]
        else:
            cells = ["—", "—", "—"]
        lines.append(
            f"| {wl.leads:,} | {wl.events:,} | {known:,.0f} | "
            + " | ".join(cells)
            + f" | {run.peak_rss_mib:,.0f} | {run.rate:,.0f} |"
        )
        console.print(lines[-1])
    lines.append(
        f"\nRSS is sampled every 0.25 s, so a reading is at most one batch "
        f"({base.batch_size:,} events) past its mark. A lead keeps the ids of its last "
        f"{Lead.RECENT_EVENT_IDS} lead-events (older ones are looked up in the event store), so "
        "its state stops growing once it has had that many."
    )
    body = "\n".join(lines)
    console.print(body)
    console.print(f"written to {write_results('memory', body)}")


if __name__ == "__main__":
    main()
