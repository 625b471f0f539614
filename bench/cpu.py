"""Where the machine's CPU goes during a run: CPU seconds per process group, from /proc.

On 2 cores shared by Kafka, PostgreSQL, Redis and the engine's processes, the sum of
everyone's CPU per lead-event is what bounds the throughput: ``2 cores / (CPU s per
event)`` is the ceiling, whichever process is busiest. So the pipeline benchmark takes a
snapshot at the start and the end of its measured window and reports, per group, the CPU
microseconds spent per lead-event.

A process that exits inside the window is counted through its parent's ``cutime`` when
the parent reaps it (PostgreSQL backends); one that starts inside it counts whole. The
benchmark's own process (it polls metrics and watermarks) is "other processes".
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")

# Service processes by their command name.
SERVICES = {"java": "Kafka broker", "postgres": "PostgreSQL", "redis-server": "Redis"}
KERNEL = "kernel threads"


def _times(pid: int) -> tuple[str, float] | None:
    """(group name, CPU seconds incl. reaped children) of one process, or None if gone.

    Kernel threads (children of kthreadd, pid 2) are one group: their names change
    with the work they do."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[1] == "2" or pid == 2:
        comm = KERNEL
    # fields[11:15] are utime, stime, cutime, cstime (stat fields 14-17)
    return comm, sum(int(f) for f in fields[11:15]) / TICK


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = parts[3] + parts[4]  # idle + iowait
    total = sum(parts[:8])  # guest time is already inside user
    return (total - idle) / TICK, total / TICK


@dataclass
class Snapshot:
    by_pid: dict[int, tuple[str, float]]
    busy: float
    total: float


def snapshot() -> Snapshot:
    by_pid = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            t = _times(int(entry))
            if t is not None:
                by_pid[int(entry)] = t
    busy, total = machine_busy()
    return Snapshot(by_pid, busy, total)


def _group(pid: int, comm: str, named: Mapping[int, str]) -> str:
    if pid in named:
        return named[pid]
    if comm in SERVICES:
        return SERVICES[comm]
    if comm == KERNEL:
        return KERNEL
    return "other processes"


def spent(start: Snapshot, end: Snapshot, named: Mapping[int, str]) -> dict[str, float]:
    """CPU seconds per group between two snapshots; ``named`` maps our pids to a label.
    Also "all (machine)" and "idle (machine)" from /proc/stat."""
    out: dict[str, float] = {}
    for pid, (comm, cpu) in end.by_pid.items():
        before = start.by_pid.get(pid)
        delta = cpu - (before[1] if before else 0.0)
        if delta > 0:
            group = _group(pid, comm, named)
            out[group] = out.get(group, 0.0) + delta
    busy = end.busy - start.busy
    out["all (machine)"] = busy
    out["idle (machine)"] = (end.total - start.total) - busy
    return out


def idle_share(spent_cpu: Mapping[str, float]) -> float:
    """The share of the cores left idle over a window measured by :func:`spent`."""
    idle = spent_cpu["idle (machine)"]
    return idle / (idle + spent_cpu["all (machine)"])
