"""Where the worker's time goes: py-spy samples of a running worker, summarised.

``record(pid, out)`` starts ``py-spy record --format raw`` on a process (collapsed stacks:
one line per distinct stack, ``frame;frame;... count``, root first, with the thread);
``summarise(text)`` turns that into tables: the functions with the most own time (the
leaf frame), the most total time (anywhere in the stack), and the share of samples per
stage of the pipeline. py-spy leaves out idle threads (waiting on a socket, a lock or a
sleep), so the shares are of the time the worker's threads were running Python or C code.
"""

from __future__ import annotations

import re
import select
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from devtools.engine_processes import stop_worker

PY_SPY = Path(sys.executable).with_name("py-spy")

# A sample belongs to the first stage whose pattern matches any of its frames.
# Order matters: the relay and projections run in their own threads and reach into the
# event store's mapper; explanations run onnxruntime; all of them sit under the worker.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("relay (score-events)", ("streams/relay.py",)),
    ("projections", ("/projections/",)),
    ("explanation", ("domain/explain.py",)),
    ("decode (Avro, validation)", ("streams/wire.py", "streams/codec.py", "fastavro")),
    ("event store save", ("save_leads", "_insert_events", "insert_events", "Application.save")),
    ("event store load", ("LeadStore.load", "Repository.get", "repository.py")),
    (
        "scoring (features, ONNX, rules)",
        (
            "modelstore.py",
            "onnxruntime",
            "domain/features.py",
            "domain/scoring.py",
            "domain/rules.py",
        ),
    ),  # fmt: skip
    ("apply (aggregates)", ("domain/lead.py", "domain/processing.py")),
    ("dead letters", ("streams/dlq.py",)),
    ("batch processor, other", ("streams/processor.py",)),
    ("Kafka consumer (Faust, aiokafka)", ("/faust/", "/aiokafka/", "/mode/")),
)

# A sample whose top frame is one of these is a thread waiting, not working.
WAITS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("waiting: PostgreSQL replies (psycopg)", ("Connection.wait (", "/psycopg/waiting.py")),
    ("waiting: event loop select", ("EpollSelector.select (", "KqueueSelector.select (")),
    ("waiting: thread lock/condition", ("Condition.wait (", "Event.wait (", "Lock.acquire")),
)
# The thread that applies batches: its time bounds the worker's throughput.
CRITICAL_THREAD = "event-store"
RATE = 97  # samples/s per thread

_LINE = re.compile(r":\d+\)$")


@dataclass
class Profile:
    samples: int
    own: Counter[str]
    total: Counter[str]
    stages: Counter[str]
    threads: Counter[str]
    critical: Counter[str]  # stages within the event-store thread


def _frame(frame: str) -> str:
    """``func (path:line)`` -> ``func (path)``: one entry per function, not per line."""
    return _LINE.sub(")", frame.strip())


def _short(frame: str) -> str:
    """A function with its path from the project or site-packages root."""
    m = re.match(r"(.*) \((.*)\)$", frame)
    if not m:
        return frame
    func, path = m.groups()
    for marker in ("site-packages/", "/work/main/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{func} ({path})"


def stage_of(frames: Sequence[str]) -> str:
    for name, patterns in WAITS:
        if any(p in frames[-1] for p in patterns):
            return name
    for name, patterns in STAGES:
        for f in frames:
            if any(p in f for p in patterns):
                return name
    return "other"


def parse(text: str) -> Profile:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    critical: Counter[str] = Counter()
    samples = 0
    for line in text.splitlines():
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = ""
        if frames and frames[0].startswith(("thread (", "process ")):
            head = frames.pop(0)
            thread = head.split(":", 1)[-1].strip() or head
            threads[thread] += count
        frames = [_frame(f) for f in frames]
        if not frames:
            continue
        samples += count
        own[_short(frames[-1])] += count
        for f in set(frames):
            total[_short(f)] += count
        stage = stage_of(frames)
        stages[stage] += count
        if thread.startswith(CRITICAL_THREAD):
            critical[stage] += count
    return Profile(samples, own, total, stages, threads, critical)


def summarise(text: str, top: int = 12, seconds: float = 0.0, rate: int = 0) -> str:
    p = parse(text)
    if not p.samples:
        return "No samples were recorded.\n"
    pct = lambda n: f"{100 * n / p.samples:.1f}%"  # noqa: E731
    lines = [f"{p.samples:,} samples of running threads.\n", "| stage | share |", "|---|---|"]
    for name, n in p.stages.most_common():
        lines.append(f"| {name} | {pct(n)} |")
    n_crit = sum(p.critical.values())
    if n_crit:
        lines += [
            "",
            f"Within the event-store thread, which applies the batches one at a time "
            f"({n_crit:,} samples, {100 * n_crit / p.samples:.0f}% of all"
            + (
                f"; it was running {100 * n_crit / (seconds * (rate or RATE)):.0f}% of the "
                f"{seconds:.0f} s measured"
                if seconds
                else ""
            )
            + "):",
            "",
            "| stage | share of that thread |",
            "|---|---|",
        ]
        for name, n in p.critical.most_common():
            lines.append(f"| {name} | {100 * n / n_crit:.1f}% |")
    lines += ["", "| thread | share of samples |", "|---|---|"]
    for name, n in p.threads.most_common(6):
        lines.append(f"| {name} | {pct(n)} |")
    lines += ["", f"Top {top} functions by own time (the frame on top of the stack):", ""]
    lines += ["| function | own |", "|---|---|"]
    for name, n in p.own.most_common(top):
        lines.append(f"| `{name}` | {pct(n)} |")
    lines += ["", f"Top {top} functions by total time (anywhere in the stack), project code:", ""]
    lines += ["| function | total |", "|---|---|"]
    ours = [
        (name, n)
        for name, n in p.total.most_common()
        if any(m in name for m in ("(streams/", "(domain/", "(leadscore/", "(projections/"))
        and not any(r in name for r in _ROOTS)
    ]
    for name, n in ours[:top]:
        lines.append(f"| `{name}` | {pct(n)} |")
    return "\n".join(lines) + "\n"


def per_event(text: str, events: int, rate: int = RATE) -> dict[str, float]:
    """µs of thread time per lead-event by stage: a sample is ``1/rate`` s of one thread
    seen running (py-spy leaves out threads blocked in the kernel, GIL waits included)."""
    if events <= 0:
        raise ValueError("per_event needs the count of lead-events the profile covers")
    return {stage: n / rate * 1e6 / events for stage, n in parse(text).stages.items()}


def compare(columns: Mapping[str, tuple[str, int]], rate: int = RATE) -> str:
    """Profiles side by side: each stage's µs of thread time per lead-event in each column
    (``name -> (py-spy raw text, lead-events it covers)``), the working stages first, by
    their cost in the first column, then the waits, then the working stages' total."""
    costs = {name: per_event(text, events, rate) for name, (text, events) in columns.items()}
    first = next(iter(costs.values()), {})
    stages = sorted(
        {stage for c in costs.values() for stage in c},
        key=lambda st: (st.startswith("waiting"), -first.get(st, 0.0), st),
    )
    lines = ["| stage | " + " | ".join(costs) + " |", "|---|" + "---|" * len(costs)]
    for stage in stages:
        lines.append(
            f"| {stage} | " + " | ".join(f"{c.get(stage, 0.0):,.0f}" for c in costs.values()) + " |"
        )
    working = [
        sum(v for st, v in c.items() if not st.startswith("waiting")) for c in costs.values()
    ]
    cells = " | ".join(f"**{w:,.0f}**" for w in working)
    lines.append(f"| **working, all stages** | {cells} |")
    return "\n".join(lines) + "\n"


# Frames every sample of a thread passes through: they say nothing about where time goes.
_ROOTS = (
    "<module> (", "main (leadscore/cli.py)", "worker (leadscore/cli.py)", "run_worker (",
    "<locals>.target (", "ScoreEventRelay.run (", "ScoreEventRelay._follow (",
    "ProjectionRunner.follow (", "ProjectionRunner.run (", "run_projections (",
)  # fmt: skip


def record(
    pid: int, out: Path, rate: int = RATE, attach_timeout: float = 30
) -> subprocess.Popen[bytes]:
    """Start sampling ``pid``; ``stop`` it to get the file written.

    Returns once py-spy says it is sampling, so the caller knows the samples start now
    and not whenever the attach finishes on a busy machine; raises if it never does.
    """
    proc = subprocess.Popen(
        [
            str(PY_SPY),
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--rate",
            str(rate),
            "--nonblocking",
            "--threads",
            "--full-filenames",
            "--output",
            str(out),
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    said = b""
    ready, _, _ = select.select([proc.stdout], [], [], attach_timeout)
    if ready:
        said = proc.stdout.readline()  # "py-spy> Sampling process 97 times a second. ..."
    if b"Sampling process" not in said:
        proc.kill()
        rest = proc.communicate()[0]
        raise RuntimeError(f"py-spy did not start sampling pid {pid}: {(said + rest).decode()}")
    return proc


def stop(proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """py-spy writes its samples when interrupted (SIGINT)."""
    stop_worker(proc, timeout, signal.SIGINT)
    if proc.stdout is not None:
        proc.stdout.close()


if __name__ == "__main__":
    print(summarise(Path(sys.argv[1]).read_text()))
