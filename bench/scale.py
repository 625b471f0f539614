"""The scale-out curve: throughput and CPU per lead-event with 1, 2, 3 and 4 workers.

One workload (``devtools.workload.generate``) is produced ahead to a topic of
``LEADSCORE_TOPIC_PARTITIONS`` partitions (6). Each round runs the engine over it once per
worker count, in one consumer group, with the split topology (relay and projections in
processes of their own, as the pipeline bench): bench/pipeline.py's ``run_ours``, so the
same clock (first stored batch → everything applied, published and projected) and the
same per-process CPU accounting. The peer is the one-worker run of the same round: each
count's speed-up is its rate over that run's, taken per round (``paired_ratio``), since
the machine drifts between rounds.

One machine of 2 cores: the curve measures how the design shares a fixed machine, not
how it grows with hardware; the CPU table says which process takes the cores as workers
are added. docs/scaling.md reads these tables.

Sizes: LEADSCORE_BENCH_SCALE_EVENTS (60,000), LEADSCORE_BENCH_SCALE_LEADS (6,000),
LEADSCORE_BENCH_ORGS (20); LEADSCORE_BENCH_SCALE_WORKERS ("1,2,3,4"); rounds:
LEADSCORE_BENCH_RUNS.
"""

from __future__ import annotations

import os
import statistics

from rich.console import Console

from adapters.settings import Settings
from bench import cpu, stack
from bench.harness import RUNS, Spread, paired_ratio, write_results
from bench.pipeline import CPU_ORDER, Run, Workload, prepare, run_ours

console = Console()

EVENTS = stack.env_int("LEADSCORE_BENCH_SCALE_EVENTS", 60_000)
LEADS = stack.env_int("LEADSCORE_BENCH_SCALE_LEADS", 6_000)
ORGS = stack.env_int("LEADSCORE_BENCH_ORGS", 20)
COUNTS = tuple(
    int(n) for n in os.environ.get("LEADSCORE_BENCH_SCALE_WORKERS", "1,2,3,4").split(",")
)


def measure(
    base: Settings, wl: Workload, counts: tuple[int, ...], rounds: int
) -> dict[int, list[Run]]:
    """``rounds`` rounds; in each, one run per worker count, in order."""
    runs: dict[int, list[Run]] = {n: [] for n in counts}
    for r in range(rounds):
        for n in counts:
            console.rule(f"round {r + 1}/{rounds}: {n} worker(s)")
            runs[n].append(run_ours(base, wl, workers=n))
    return runs


def per_event(x: Run, group: str, events: int) -> float:
    return x.cpu.get(group, 0.0) / events * 1e6


def lock_share(x: Run) -> float:
    """The share of the run's window in which some worker held the store's write lock: the
    sum of the saves' holds over the window (they cannot overlap: the lock is exclusive)."""
    return x.lock.get("lock_held_s", 0.0) / x.seconds if x.seconds > 0 else float("nan")


def lock_per_save(x: Run, key: str) -> float:
    saves = x.lock.get("saves", 0.0)
    return x.lock.get(key, 0.0) / saves if saves else float("nan")


def report(wl: Workload, runs: dict[int, list[Run]], partitions: int) -> str:
    counts = sorted(runs)
    one = [x.rate for x in runs[counts[0]]]
    lines = [
        f"{wl.events:,} lead-events over {wl.leads:,} leads in {len(wl.orgs)} orgs, produced "
        f"ahead to a topic of {partitions} partitions; workers in one consumer group, relay "
        "and projections in processes of their own. Rate: from the first stored batch until "
        "every event is applied, every score published and all three read models at the "
        f"store's head. Speed-up: a run's rate over the {counts[0]}-worker run of the same "
        "round.",
        "",
        "| workers | lead-events/s | speed-up (paired) | all applied / published / "
        "projected after, s | whole-machine CPU µs per lead-event | idle share of the cores "
        "| store lock held, share of the window | lock wait per save, ms | events per save |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n in counts:
        xs = runs[n]
        rate = Spread.of([x.rate for x in xs])
        # A run too short to time (all of it inside the first sample) has no rate to pair.
        paired = [(x.rate, o) for x, o in zip(xs, one, strict=True) if x.rate > 0 and o > 0]
        up = paired_ratio([a for a, _ in paired], [b for _, b in paired]) if paired else None
        after = " / ".join(
            f"{statistics.median(x.done_after.get(k, float('nan')) for x in xs):.1f}"
            for k in ("applied", "published", "clickhouse")
        )
        machine = statistics.median(per_event(x, "all (machine)", wl.events) for x in xs)
        idle = statistics.median(cpu.idle_share(x.cpu) for x in xs)
        held = statistics.median(lock_share(x) for x in xs)
        wait_ms = statistics.median(lock_per_save(x, "lock_wait_s") * 1e3 for x in xs)
        # lead-events in the window (rate x window) over the saves in it
        per_save = statistics.median(
            x.rate * x.seconds / x.lock["saves"] if x.lock.get("saves") else float("nan")
            for x in xs
        )
        lines.append(
            f"| {n} | {rate} | "
            + (f"{up.median:.2f}x (min {up.low:.2f}, max {up.high:.2f})" if up else "n/a")
            + " | "
            f"{after} | {machine:,.0f} | {idle:.0%} | {held:.0%} | {wait_ms:.1f} | "
            f"{per_save:,.0f} |"
        )
    lines += [
        "",
        "CPU µs per lead-event by process group (medians of the rounds):",
        "",
        "| process group | " + " | ".join(f"{n} worker(s)" for n in counts) + " |",
        "|---|" + "---|" * len(counts),
    ]
    for group in CPU_ORDER:
        cells = [
            f"{statistics.median(per_event(x, group, wl.events) for x in runs[n]):,.0f}"
            for n in counts
        ]
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bench(base: Settings, events: int, leads: int, orgs: int, rounds: int) -> str:
    console.rule(f"[bold]scale-out: {events:,} events, workers {', '.join(map(str, COUNTS))}")
    wl = prepare(base, events, leads, orgs)
    try:
        runs = measure(base, wl, COUNTS, rounds)
    finally:
        stack.delete_topics(base.kafka, [wl.topic])
    return report(wl, runs, base.topic_partitions)


def main() -> None:
    body = bench(stack.base_settings(), EVENTS, LEADS, ORGS, RUNS)
    console.print(body)
    console.print(f"written to {write_results('scale', body)}")


if __name__ == "__main__":
    main()
