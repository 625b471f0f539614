"""What every benchmark shares: repeated runs, medians, the machine, the results file."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = int(os.environ.get("LEADSCORE_BENCH_RUNS", "3"))


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))

    def __str__(self) -> str:
        return f"{self.median:,.1f} (min {self.low:,.1f}, max {self.high:,.1f})"


def ratio(ours: Spread, peer: Spread) -> float:
    return ours.median / peer.median if peer.median else float("nan")


def paired_ratio(ours: Sequence[float], peer: Sequence[float]) -> Spread:
    """Ratios of runs made back to back, then their spread.

    On a shared machine the load drifts between runs; a run and its peer's run taken
    together see about the same machine, so their ratio is steadier than a ratio of
    medians taken minutes apart.
    """
    return Spread.of([o / p for o, p in zip(ours, peer, strict=True) if p])


def machine() -> str:
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = ", ".join(
        f"{p} {metadata.version(p)}"
        for p in ("starlette", "uvicorn", "asyncpg", "redis", "onnxruntime", "faust-streaming")
    )
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem_kb / 1024 / 1024:.1f} GiB, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}; {versions}"
    )


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_results(name: str, body: str) -> Path:
    """Append a dated section to bench/results/<date>-<name>.md and return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    path = RESULTS / f"{now:%Y-%m-%d}-{name}.md"
    header = (
        f"\n## {name} — {now:%Y-%m-%d %H:%M} UTC, commit {git_commit()}\n\n"
        f"Machine: {machine()}. Runs per figure: {RUNS}; figures are medians (min, max).\n\n"
    )
    with path.open("a") as f:
        f.write(header + body.rstrip() + "\n")
    return path
