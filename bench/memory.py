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

Two more measurements on the first size's workload say what the growth is:
- The same run with an aggregate cache a quarter of the leads
  (LEADSCORE_BENCH_MEMORY_SMALL_CACHE): the bound is the cache, so the RSS stops growing.
- The Leads alone, in this process (domain/ fed by ``apply_batch`` with the same model, no
  services): their deep size (pympler) at the same marks, and how many lead-events the
  leads had had by then. The generator spreads a lead's events over its life, so most
  leads are still filling their fixed-size state (kinds of activity, an explanation) when
  the worker is measured; a lead's own size stops growing (tests/unit/test_lead.py).
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import statistics
from pathlib import Path
from uuid import UUID

from pympler.asizeof import asizeof
from rich.console import Console

from adapters.modelstore import load_scorer
from adapters.settings import Settings
from bench import stack
from bench.harness import write_results
from bench.pipeline import Run, Workload, progress_bar, run_ours
from devtools import services
from devtools.workload import generate
from domain.events import EventType, LeadEvent
from domain.lead import Lead
from domain.processing import apply_batch, event_time

console = Console()
SIZES = [
    int(x.replace("_", ""))
    for x in os.environ.get("LEADSCORE_BENCH_MEMORY_LEADS", "100000,1000000").split(",")
]
GROWTH = stack.env_int("LEADSCORE_BENCH_MEMORY_EVENTS", 200_000)
ORGS = stack.env_int("LEADSCORE_BENCH_ORGS", 20)
SMALL_CACHE = stack.env_int("LEADSCORE_BENCH_MEMORY_SMALL_CACHE", SIZES[0] // 4)


def workload(leads: int, more: int) -> list[LeadEvent]:
    """LeadCreated of ``leads`` leads, then ``more`` events of the same leads."""
    events = list(generate(ORGS, leads, leads + more, seed=31))
    created = [e for e in events if e.event_type == EventType.LEAD_CREATED]
    return created + [e for e in events if e.event_type != EventType.LEAD_CREATED]


def prepare(base: Settings, ordered: list[LeadEvent]) -> Workload:
    """``ordered`` produced ahead to a topic of its own."""
    created = [e for e in ordered if e.event_type == EventType.LEAD_CREATED]
    topic = f"lead-events-bench-mem-{secrets.token_hex(3)}"
    services.ensure_topics(base.kafka, [topic], base.topic_partitions)
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


@dataclasses.dataclass
class LeadSizes:
    """The Leads alone after the first ``mark`` events: their deep size, and how many
    lead-events each had had."""

    mark: int
    mib: float  # all Leads together (shared objects counted once)
    busiest: int  # bytes, the Lead that had had the most lead-events
    per_lead: list[int]  # lead-events applied, sorted


def lead_sizes(base: Settings, ordered: list[LeadEvent], marks: list[int]) -> list[LeadSizes]:
    """Apply ``ordered`` to Leads in this process as the worker does (batches, the active
    model, explanations) and measure them at each of ``marks``."""
    scorer = load_scorer(Path(base.model_dir), base.model_version or None)
    leads: dict[UUID, Lead] = {}
    out: list[LeadSizes] = []
    pending = sorted(marks)
    with progress_bar() as progress:
        task = progress.add_task("the Leads alone (domain/)", total=len(ordered))
        for start in range(0, len(ordered), base.batch_size):
            batch = ordered[start : start + base.batch_size]
            applied = apply_batch(batch, leads, scorer, event_time, batch[-1].occurred_at)
            for agg_id, lead in applied.touched.items():
                lead.collect_events()
                leads[agg_id] = lead
            done = start + len(batch)
            progress.update(task, completed=done)
            while pending and done >= pending[0]:
                pending.pop(0)
                busiest = max(leads.values(), key=lambda lead: lead.applied_count)
                out.append(
                    LeadSizes(
                        mark=done,
                        mib=asizeof(*leads.values()) / 2**20,
                        busiest=asizeof(busiest),
                        per_lead=sorted(lead.applied_count for lead in leads.values()),
                    )
                )
    return out


def pct(values: list[int], p: float) -> int:
    return values[min(len(values) - 1, int(p * len(values)))]


def rss_cells(run: Run, wl: Workload, growth: int) -> list[str]:
    known = rss_when(run, wl.leads)
    if not growth:
        return [f"{known:,.0f}", "—", "—", "—"]
    at_n, at_2n = rss_when(run, wl.leads + growth), rss_when(run, wl.events)
    return [f"{known:,.0f}", f"{at_n:,.0f}", f"{at_2n:,.0f}", f"{at_2n - at_n:+,.0f}"]


def main() -> None:
    base = stack.base_settings()
    lines = [
        f"One run per size (a state, not a rate); one worker, the engine as {stack.TOPOLOGY_TEXT} "
        f"(LEADSCORE_BENCH_TOPOLOGY={stack.TOPOLOGY}).\n",
        "| leads | aggregate cache (leads) | events taken | RSS after every lead is known, MiB | "
        f"after +{GROWTH:,} events (+{GROWTH / SIZES[0]:,.1f} per lead) | "
        f"after +{2 * GROWTH:,} events (+{2 * GROWTH / SIZES[0]:,.1f} per lead) | "
        "growth N → 2N, MiB | peak RSS (VmHWM), MiB | lead-events/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    growth_events: list[LeadEvent] = []
    # (leads, aggregate cache, events after the leads are known)
    runs = [
        (leads, base.aggregate_cache_size, 2 * GROWTH if i == 0 else 0)
        for i, leads in enumerate(SIZES)
    ]
    if SMALL_CACHE > 0:
        runs.insert(1, (SIZES[0], SMALL_CACHE, 2 * GROWTH))
    for leads, cache, more in runs:
        console.rule(f"[bold]memory: {leads:,} leads, then {more:,} events; cache {cache:,} leads")
        ordered = workload(leads, more)
        if more:
            growth_events = ordered
        wl = prepare(base, ordered)
        try:
            run = run_ours(dataclasses.replace(base, aggregate_cache_size=cache), wl, workers=1)
        finally:
            stack.delete_topics(base.kafka, [wl.topic])
        lines.append(
            f"| {wl.leads:,} | {cache:,} | {wl.events:,} | "
            + " | ".join(rss_cells(run, wl, GROWTH if more else 0))
            + f" | {run.peak_rss_mib:,.0f} | {run.rate:,.0f} |"
        )
        console.print(lines[-1])
    lines.append(
        f"\nRSS is sampled every 0.25 s, so a reading is at most one batch "
        f"({base.batch_size:,} events) past its mark. A lead keeps the ids of its last "
        f"{Lead.RECENT_EVENT_IDS} lead-events (older ones are looked up in the event store)."
    )
    if growth_events:
        marks = [SIZES[0], SIZES[0] + GROWTH, SIZES[0] + 2 * GROWTH]
        sizes = lead_sizes(base, growth_events, marks)
        lines += [
            f"\nThe Leads alone ({SIZES[0]:,} leads, the same events, in one process with no "
            "services; deep size by pympler's asizeof):\n",
            "| after events | all Leads, MiB | bytes per lead | lead-events per lead: "
            "median / p90 / max | the lead with most lead-events, bytes |",
            "|---|---|---|---|---|",
        ]
        for size in sizes:
            n = size.per_lead
            lines.append(
                f"| {size.mark:,} | {size.mib:,.1f} | {size.mib * 2**20 / len(n):,.0f} | "
                f"{pct(n, 0.5):,} / {pct(n, 0.9):,} / {n[-1]:,} | {size.busiest:,} |"
            )
    body = "\n".join(lines)
    console.print(body)
    console.print(f"written to {write_results('memory', body)}")


if __name__ == "__main__":
    main()
