"""The benchmark harness runs: the pipeline, scale-out and latency benches at a tiny size,
one run.

This checks that they run end to end against the real services and produce a results
body with the rows we expect; it says nothing about how fast anything is (`make bench`
measures that). Nothing is written to bench/results.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from adapters.settings import Settings
from bench import latency, pipeline, scale, stack
from bench import profile as profiling


def test_pipeline_bench_runs_and_reports_every_row(
    services: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline, "WORKERS", 1)
    # The measured window opens at the first poll (every 0.25 s) that sees an event
    # applied. 1,500 events in one batch were once all applied before it (rate 0/s, no
    # PostgreSQL CPU in the window); 6,000 in batches of 250 take the worker over a second.
    small_batches = dataclasses.replace(services, batch_size=250)
    body = pipeline.bench(small_batches, 6_000, 300, 3, 1, profile=True, perf=True)
    for row in (
        "| **leadscore worker**",
        "| (a0) Faust agent taking batches",
        "| (a0) the same on the worker's consumer loop",
        "| (a) Faust agent",
        "| (b) confluent-kafka consume",
        "| (c) kafka-producer-perf-test",
        "| (c) kafka-consumer-perf-test",
        "| lead-events/s |",
        "| worker peak RSS (VmHWM), MiB |",
        "| scores stored / score-events on the topic |",
        "| process group | CPU µs per lead-event | share |",
        "### Where the time goes",  # what py-spy saw: test_profiled_run_samples_...
    ):
        assert row in body, row
    stored, on_topic = _cells(body, "| scores stored / score-events on the topic |")[0].split(" / ")
    assert int(stored.replace(",", "")) > 0
    assert int(on_topic.replace(",", "")) >= int(stored.replace(",", ""))
    # The workers and PostgreSQL did work in the window measured, and the machine more.
    worker_us = float(_cells(body, "| worker |")[0].replace(",", ""))
    postgres_us = float(_cells(body, "| PostgreSQL |")[0].replace(",", ""))
    machine_us = float(_cells(body, "| **all, whole machine** |")[0].strip("*").replace(",", ""))
    assert 0 < worker_us < machine_us
    assert 0 < postgres_us < machine_us


def test_profiled_run_samples_the_event_store_thread(services: Settings, tmp_path: Path) -> None:
    # py-spy starts once the worker has received its first lead-event, so the run must
    # outlast that: 1,500 events in one batch of 3,000 can be done before the next poll.
    # 8,000 events in batches of 500 keep the worker busy for several seconds.
    small_batches = dataclasses.replace(services, batch_size=500)
    wl = pipeline.prepare(small_batches, 8_000, 400, 3)
    try:
        run = pipeline.run_ours(small_batches, wl, workers=1, profile_to=tmp_path / "spy.txt")
    finally:
        stack.delete_topics(services.kafka, [wl.topic])
    p = profiling.parse(run.profile)
    assert p.samples > 0, run.profile
    assert sum(p.critical.values()) > 0, dict(p.threads)  # the event-store thread was seen
    summary = profiling.summarise(run.profile, seconds=run.seconds)
    assert "Within the event-store thread" in summary
    assert "| event store save |" in summary or "| event store load |" in summary, summary


def test_latency_bench_runs_and_reports_every_rate(services: Settings) -> None:
    body = latency.measure(services, [200, 400], 1.0, 1, warmup_s=0.4, backlog=600)
    watched = 0
    for rate in ("| 200 |", "| 400 |"):
        row = next(line for line in body.splitlines() if line.startswith(rate))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[4].startswith("**"), row  # p99 of ours
        assert cells[8] not in ("nan", ""), row  # peer p99
        watched += int(cells[13].replace(",", ""))  # seen through the API, its own segment
    assert watched > 0, body
    # The hop table: three hops per rate, each p50 / p99 in ms, none negative (one clock).
    hops = body.split("Where the latency goes, hop by hop", 1)[1].split("Where the machine's CPU")[
        0
    ]
    for rate in ("| 200 |", "| 400 |"):
        row = next(line for line in hops.splitlines() if line.startswith(rate))
        cells = [c.strip() for c in row.strip("|").split("|")[1:]]
        assert len(cells) == 3, row
        for cell in cells:
            p50, p99 = (float(x.replace(",", "")) for x in cell.split(" / "))
            assert 0 <= p50 <= p99, row
    cpu_rows = {line.split("|")[1].strip(): line for line in body.splitlines() if "|" in line}
    worker = [c.strip() for c in cpu_rows["worker"].strip("|").split("|")[1:]]
    # two rates, then the backlog burst's column
    assert len(worker) == 3 and all(float(c.replace(",", "")) > 0 for c in worker), worker
    assert "**all, whole machine**" in cpu_rows
    sizes = [c.strip() for c in cpu_rows["*the worker's batches: lead-events per batch, mean*"]
             .strip("|").split("|")[1:]]  # fmt: skip
    assert len(sizes) == 3 and all(int(c.replace(",", "")) >= 1 for c in sizes), sizes
    scores = [c.strip() for c in cpu_rows["*scores recorded per lead-event*"].strip("|").split("|")]
    assert all(0 < float(c) <= 1 for c in scores[1:]), scores  # a score per lead-event at most
    # The load alone (its own segment) is measured and subtracted; live ÷ backlog is shown.
    load = [c.strip() for c in cpu_rows["the load alone"].strip("|").split("|")[1:]]
    assert len(load) == 3 and all(float(c.replace(",", "")) > 0 for c in load), load
    assert "**ours net of the load**" in cpu_rows
    ratios = [c.strip() for c in cpu_rows["live ÷ backlog"].strip("|").split("|")[1:]]
    assert len(ratios) == 3 and all(c.endswith("×") for c in ratios[:2]), ratios
    assert "Backlog, the same engine: 600 lead-events" in body, body
    # One more live segment (at the highest rate here) and one more burst, the worker
    # sampled by py-spy, side by side; not in the tables above.
    profile = body.split("### The worker's profile, live against the backlog", 1)[1]
    assert "| stage | live, 400/s | backlog (one burst) |" in profile, profile
    assert "| **working, all stages** |" in profile, profile


def test_profile_summary_attributes_samples_to_stages() -> None:
    raw = "\n".join(
        [
            "thread (1): event-store_0;process (/x/streams/processor.py:10);"
            "decode (/x/streams/wire.py:5) 6",
            "thread (1): event-store_0;process (/x/streams/processor.py:10);"
            "explain (/x/domain/explain.py:3);run (/x/onnxruntime/session.py:1) 3",
            "thread (2): score-event-relay;publish_once (/x/streams/relay.py:4);"
            "Connection.wait (/x/psycopg/connection.py:9) 1",
        ]
    )
    p = profiling.parse(raw)
    assert p.samples == 10
    assert p.stages["decode (Avro, validation)"] == 6
    assert p.stages["explanation"] == 3
    assert p.stages["waiting: PostgreSQL replies (psycopg)"] == 1
    assert sum(p.critical.values()) == 9
    assert "| decode (Avro, validation) | 60.0% |" in profiling.summarise(raw)


def test_scale_bench_reports_each_worker_count(
    services: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scale, "COUNTS", (1, 2))
    # Batches of 500, not 3,000: two workers' first batches could both land before the
    # first poll, and a run mostly done before its window opens is refused (run_ours).
    body = scale.bench(dataclasses.replace(services, batch_size=500), 6_000, 600, 2, 1)
    rates = {}
    for n in (1, 2):
        cells = _cells(body, f"| {n} |")
        rates[n] = float(cells[0].split()[0].replace(",", ""))
        assert rates[n] > 0
        assert cells[1].startswith("1.00x") if n == 1 else cells[1].endswith(")")
        # the workers' store-lock metrics reached the bench: saves were counted
        assert float(cells[7].replace(",", "")) > 0, cells
    worker = _cells(body, "| worker |")
    assert len(worker) == 2 and all(float(c.replace(",", "")) > 0 for c in worker)


def _cells(body: str, prefix: str) -> list[str]:
    line = next(line for line in body.splitlines() if line.startswith(prefix))
    return [c.strip() for c in line[len(prefix) :].strip("|").split("|")]


pytestmark = pytest.mark.integration
