"""bench/latency.py's report of the targets not met, and bench/profile.py's side-by-side
profile: computed from the figures given, nothing measured here."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import latency
from bench import profile as profiling
from bench.latency import MACHINE, UNPACED, CpuFigures, Segment


def seg(who: str, rate: int, run: int, events: int, idle: float = 0.0, **cpu_s: float) -> Segment:
    """A segment whose CPU seconds per group are given; the machine is their sum."""
    spent = {k.replace("_", " "): v for k, v in cpu_s.items()}
    spent[MACHINE] = sum(spent.values())
    spent["idle (machine)"] = idle
    return Segment(
        who, rate, run, Path("unused"), events, spent, batches=events / 100, scored=0.4 * events
    )


def figures() -> CpuFigures:
    # 2,000/s: 20,000 lead-events live; the worker 8 s, PostgreSQL 4 s, the load 2 s;
    # the burst: the worker 3 s, PostgreSQL 1 s, its load 0.4 s.
    return CpuFigures(
        [
            seg("ours", 2000, 0, 20_000, worker=8.0, PostgreSQL=4.0, idle=6.0),
            seg("load", 2000, 0, 20_000, other_processes=2.0),
            seg("backlog", UNPACED, 0, 20_000, worker=3.0, PostgreSQL=1.0),
            seg("backlog load", UNPACED, 0, 20_000, other_processes=0.4),
        ]
    )


def test_cpu_figures_net_of_the_load_and_per_group() -> None:
    f = figures()
    assert f.per_event("ours", 2000, "worker") == pytest.approx(400.0)
    assert f.net("ours", "load", 2000) == pytest.approx(500.0)  # (12 - 2) s / 20,000
    assert f.net("backlog", "backlog load", UNPACED) == pytest.approx(180.0)  # (4 - 0.4) s
    assert f.idle("ours", 2000) == pytest.approx(6.0 / 18.0)
    assert f.batch("ours", 2000) == pytest.approx(100.0)
    assert f.scored("ours", 2000) == pytest.approx(0.4)


def test_obstacles_name_the_missed_p99_its_slowest_hop_and_the_ratio() -> None:
    hops = {2000: [(10.0, 40.0), (12.0, 130.0), (2.0, 6.0)]}
    text = "\n".join(latency.obstacles(figures(), {2000: 180.0}, hops, {}))
    assert "**p99 < 100 ms at 2,000/s** (measured 180 ms)" in text
    assert "was 33% idle" in text
    assert "500 µs of CPU per lead-event net of the load" in text
    assert "the hop with the largest p99 was scored → produced (130 ms" in text
    # 500 / 180 = 2.78x; the worker differs most (400 against 150 µs), then PostgreSQL
    assert "**live ÷ backlog ≤ 1.5× at 2,000/s** (measured 2.78×)" in text
    assert text.index("worker 400 against 150 µs") < text.index("PostgreSQL 200 against 50 µs")


def test_obstacles_compare_each_process_net_of_its_own_share_of_the_load() -> None:
    # The broker is busy live mostly because of the load itself (the generator's produce
    # requests): net of the load alone it is 10 µs, not 300, and the worker leads.
    f = CpuFigures(
        [
            seg("ours", 2000, 0, 20_000, worker=8.0, Kafka_broker=6.0),
            seg("load", 2000, 0, 20_000, Kafka_broker=5.8),
            seg("backlog", UNPACED, 0, 20_000, worker=3.0, other_processes=0.4),
            seg("backlog load", UNPACED, 0, 20_000, other_processes=0.4),
        ]
    )
    text = "\n".join(latency.obstacles(f, {}, {}, {}))
    assert "live against the burst: worker 400 against 150 µs, Kafka broker 10 against 0 µs" in text


def test_obstacles_say_nothing_of_targets_met() -> None:
    f = CpuFigures(
        [
            seg("ours", 2000, 0, 20_000, worker=4.0),
            seg("load", 2000, 0, 20_000, other_processes=1.0),
            seg("backlog", UNPACED, 0, 20_000, worker=3.0),
            seg("backlog load", UNPACED, 0, 20_000, other_processes=0.5),
        ]
    )
    # p99 under its target and live ÷ backlog = 150 / 125 = 1.2x
    assert latency.obstacles(f, {2000: 60.0}, {}, {}) == []


def test_obstacles_show_the_profile_stages_that_grew_live() -> None:
    live = "thread (1): event-store_0;process (/x/streams/wire.py:1) 194\n"
    burst = "thread (1): event-store_0;process (/x/streams/wire.py:1) 97\n"
    profiles = {"live, 2,000/s": (live, 1_000), "backlog (one burst)": (burst, 1_000)}
    text = "\n".join(latency.obstacles(figures(), {}, {}, profiles))
    # 194 samples at 97/s over 1,000 events = 2,000 µs; 97 = 1,000 µs
    assert "decode (Avro, validation) +1,000 µs" in text


def test_compare_puts_profiles_side_by_side_in_us_per_event() -> None:
    a = (
        "thread (1): event-store_0;process (/x/streams/wire.py:1) 97\n"
        "thread (1): event-store_0;w (/x/psycopg/connection.py:1);"
        "Connection.wait (/x/psycopg/connection.py:2) 97\n"
    )
    b = "thread (1): event-store_0;apply (/x/domain/lead.py:1) 194\n"
    table = profiling.compare({"live": (a, 1_000), "burst": (b, 2_000)})
    lines = table.splitlines()
    assert lines[0] == "| stage | live | burst |"
    assert "| decode (Avro, validation) | 1,000 | 0 |" in lines
    assert "| apply (aggregates) | 0 | 1,000 |" in lines
    # waits come after the working stages and are not in the working total
    assert lines.index("| waiting: PostgreSQL replies (psycopg) | 1,000 | 0 |") == len(lines) - 2
    assert lines[-1] == "| **working, all stages** | **1,000** | **1,000** |"
    with pytest.raises(ValueError):
        profiling.per_event(a, 0)
