"""bench/cpu.py: CPU seconds per process group, from /proc."""

from __future__ import annotations

import os
import time

from bench import cpu


def test_spent_groups_named_processes_services_and_the_rest() -> None:
    start = cpu.Snapshot(
        by_pid={10: ("python", 1.0), 11: ("postgres", 5.0), 12: ("java", 2.0)},
        busy=100.0,
        total=300.0,
    )
    end = cpu.Snapshot(
        by_pid={
            10: ("python", 3.5),  # ours, named
            11: ("postgres", 6.0),
            12: ("java", 2.5),
            13: ("postgres", 0.5),  # a backend started inside the window counts whole
            14: ("bash", 0.25),
            15: (cpu.KERNEL, 0.1),
        },
        busy=105.0,
        total=310.0,
    )
    spent = cpu.spent(start, end, {10: "worker"})
    assert spent == {
        "worker": 2.5,
        "PostgreSQL": 1.5,
        "Kafka broker": 0.5,
        "other processes": 0.25,
        "kernel threads": 0.1,
        "all (machine)": 5.0,
        "idle (machine)": 5.0,
    }


def test_a_busy_process_is_measured() -> None:
    before = cpu.snapshot()
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    spent = cpu.spent(before, cpu.snapshot(), {os.getpid(): "this test"})
    assert 0.25 <= spent["this test"] <= spent["all (machine)"] + 0.05
