"""What the stack costs with no lead-events at all: CPU of each process, idle.

Starts `leadscore worker` (relay, webhook dispatcher and PostgreSQL/Redis projections in
it, as `make demo` runs it) and `leadscore api` (with its embedded ClickHouse
projection) on the running services, lets them settle, then reads /proc CPU times of
each engine process and of the services (Kafka broker, PostgreSQL, Redis) over a window.
Target (issue 20): the whole stack under 3% of one core. No peer: the figure is absolute,
and the machine's other load is what makes the runs differ; medians of the runs.

LEADSCORE_BENCH_IDLE_SETTLE_S (20) and LEADSCORE_BENCH_IDLE_WINDOW_S (30); runs:
LEADSCORE_BENCH_RUNS.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from pathlib import Path

from rich.console import Console

from adapters.settings import Settings
from bench import stack
from bench.harness import RUNS, write_results
from devtools.services import postgres

console = Console()

SETTLE_S = stack.env_int("LEADSCORE_BENCH_IDLE_SETTLE_S", 20)
WINDOW_S = stack.env_int("LEADSCORE_BENCH_IDLE_WINDOW_S", 30)
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def services(s: Settings) -> dict[int, str]:
    """The service processes of this stack, by pid: Kafka (its run dir), PostgreSQL (its
    postmaster, by data directory, and the backends it forked), Redis (its address)."""
    redis_port = s.redis_url.rsplit(":", 1)[-1].split("/")[0]
    postmaster = str(postgres.layout(s).data)
    out: dict[int, str] = {}
    parents: dict[int, int] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            comm = (p / "comm").read_text().strip()
        except OSError:
            continue
        if comm == "java" and str(s.run_path / "kafka") in cmd:
            out[int(p.name)] = "Kafka broker"
        elif comm == "postgres":
            if postmaster in cmd:
                out[int(p.name)] = "PostgreSQL"
            else:  # a backend: ours if its parent is this stack's postmaster
                parents[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
        elif comm == "redis-server" and f":{redis_port}" in cmd:
            out[int(p.name)] = "Redis"
    ours = {pid for pid, group in out.items() if group == "PostgreSQL"}
    out.update({pid: "PostgreSQL" for pid, parent in parents.items() if parent in ours})
    return out


def one_run(base: Settings) -> dict[str, float]:
    """% of one core per process group over the window."""
    # As `make demo` runs it: one worker with everything in it, the decay timer on.
    s = dataclasses.replace(base, decay_interval_s=Settings.from_env().decay_interval_s)
    logs = base.run_path / "logs" / "bench"
    worker = stack.start_process(["-m", "leadscore.cli", "worker"], s, logs / "idle-worker.log")
    api = stack.start_process(["-m", "leadscore.cli", "api"], s, logs / "idle-api.log")
    try:
        time.sleep(SETTLE_S)
        groups = {worker.pid: "worker (+ relay, dispatcher, projections)"}
        groups[api.pid] = "query API (+ ClickHouse projection)"
        groups.update(services(s))
        before = {pid: cpu_seconds(pid) for pid in groups}
        time.sleep(WINDOW_S)
        spent: dict[str, float] = {}
        for pid, group in groups.items():
            try:
                used = cpu_seconds(pid) - before[pid]
            except OSError:  # a PostgreSQL backend that ended: its share is lost
                continue
            spent[group] = spent.get(group, 0.0) + used
        return {g: 100 * v / WINDOW_S for g, v in spent.items()}
    finally:
        stack.stop_process(api)
        stack.stop_process(worker)


def report(runs: list[dict[str, float]]) -> str:
    groups = sorted({g for r in runs for g in r})
    total = [sum(r.values()) for r in runs]
    rows = [
        f"| {g} | {statistics.median(r.get(g, 0.0) for r in runs):.1f} | "
        f"{min(r.get(g, 0.0) for r in runs):.1f}–{max(r.get(g, 0.0) for r in runs):.1f} |"
        for g in groups
    ]
    verdict = "met" if statistics.median(total) < 3 else "not met"
    return "\n".join(
        [
            f"No lead-events; {SETTLE_S} s to settle, then {WINDOW_S} s measured from /proc. "
            "PostgreSQL: the backends alive through the window.",
            "",
            "| process group | % of one core, median | range |",
            "|---|---|---|",
            *rows,
            f"| **whole stack** | **{statistics.median(total):.1f}** | "
            f"{min(total):.1f}–{max(total):.1f} |",
            "",
            f"Target, under 3% of one core: {verdict}.",
        ]
    )


def main() -> None:
    base = stack.base_settings()
    runs = []
    for i in range(RUNS):
        console.rule(f"idle stack, run {i + 1}/{RUNS}")
        runs.append(one_run(base))
    body = report(runs)
    console.print(body)
    console.print(f"written to {write_results('idle', body)}")


if __name__ == "__main__":
    main()
