"""Latency: producing a lead-event -> receiving its score-event, at constant offered loads.

An open-loop generator (its own process: ``python -m bench.latency gen``) sends
pre-encoded lead-events on schedule (500, 2,000 and 5,000 events/s by default), a few
per millisecond tick, never waiting for replies, and writes down when it sent each one.
A receiver process (``python -m bench.latency recv``) reads score-events from the end of
the topic and notes when each arrived (decoding only after the run); events are matched
by ``caused_by_event_id``. Only lead-events that changed a score produce a score-event,
so the samples are those events (their share is shown).

The query API too, in a segment of its own after ours at each rate (the same load sent
again): a watcher process polls GET /leads/{id} for a sample of leads until the lead
shows a score at least as new as its score-event (produced -> visible via the API). Its
polling costs the API and the machine CPU, so ours' latency and CPU are measured with the
watcher switched off (it watches only while its switch file exists).

The peer, in the same run and on the same broker: bench/peers.py's raw confluent-kafka
consume -> produce loop forwarding the same events (headers included) to a sink topic,
timed by the same generator and receiver: the Kafka + Python I/O floor of any consumer
that answers each event with a message.

CPU per lead-event is measured per process group over each segment (bench/cpu.py), and
compared like for like with a backlog: a live segment's whole-machine figure holds the
load itself (the generator process and the broker taking its produce requests, a thousand
a second at a 1 ms linger), which a backlog produced ahead does not. So the load is also
sent alone, at the same rate, to a topic nobody reads, and subtracted; and once per run a
backlog of LEADSCORE_BENCH_LATENCY_BACKLOG lead-events (20,000) is sent unpaced in one
burst to the same engine, measured until caught up, its own load (the same burst, alone)
subtracted the same way. Live ÷ backlog is issue 20's "CPU per live event" ratio.

Where a target is not met, the results say what stands in the way, from the figures
measured: how busy the machine was, the hop that held the p99, the processes that spend
more per lead-event live than on the backlog; and a profile: one more live segment at
2,000/s (or the highest rate) and one more burst, with py-spy sampling the worker
(bench/profile.py), side by side in µs of thread time per lead-event. The profiled
segments are not in the other tables (sampling costs CPU); LEADSCORE_BENCH_PROFILE=0
leaves them out.

Sizes: LEADSCORE_BENCH_LATENCY_RATES (default "500,1000,2000,5000"),
LEADSCORE_BENCH_LATENCY_SECONDS per rate and run (10), LEADSCORE_BENCH_RUNS; worker
processes: LEADSCORE_BENCH_LATENCY_WORKERS (1); one lead in
LEADSCORE_BENCH_LATENCY_API_SAMPLE (10) watched through the API.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import secrets
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog
from rich.console import Console

from adapters.settings import Settings
from bench import cpu, stack
from bench import profile as profiling
from bench.harness import RUNS, Spread, write_results
from devtools import services
from devtools.workload import generate

log = structlog.get_logger(__name__)
console = Console()

RATES = [
    int(r) for r in os.environ.get("LEADSCORE_BENCH_LATENCY_RATES", "500,1000,2000,5000").split(",")
]
SECONDS = float(os.environ.get("LEADSCORE_BENCH_LATENCY_SECONDS", "10"))
WARMUP_SECONDS = 2.0
# One worker: at 500 events/s it answered sooner than two (p50 109 against 190 ms, p99
# 279 against 687, in the runs of 2026-11-28); at 2,000 and 5,000 both are over capacity.
WORKERS = stack.env_int("LEADSCORE_BENCH_LATENCY_WORKERS", 1)
# One lead in this many is watched through the API (LEADSCORE_BENCH_LATENCY_API_SAMPLE).
API_SAMPLE = stack.env_int("LEADSCORE_BENCH_LATENCY_API_SAMPLE", 10)
TARGETS_MS = {500: 50.0, 2000: 100.0, 5000: 250.0}  # p99 targets of issues 6 and 20
# Lead-events in each run's backlog segment (LEADSCORE_BENCH_LATENCY_BACKLOG), sent
# unpaced; live CPU per event at 2,000/s is to be at most LIVE_TO_BACKLOG times its figure.
BACKLOG = stack.env_int("LEADSCORE_BENCH_LATENCY_BACKLOG", 20_000)
UNPACED = 10**9  # the generator's rate for a burst: everything is due at once
PROFILE = stack.env_int("LEADSCORE_BENCH_PROFILE", 1)
READ_MODELS = 3  # PostgreSQL, Redis, ClickHouse: caught up when all three report the head
LIVE_TO_BACKLOG = (2000, 1.5)
LOADS = {"load", "backlog load"}  # segments sent to the topic nobody reads
MACHINE = "all (machine)"  # bench/cpu.py's whole-machine figure
ID_HEADER = "bench-event-id"
CPU_GROUPS = (
    "worker",
    *stack.OUTBOX_NAMES,
    "query API (+ ClickHouse projection)",
    "PostgreSQL",
    "Kafka broker",
    "Redis",
    "bench: receivers, API watcher, peer",
    "other processes",
    "kernel threads",
)


# -- the generator process ------------------------------------------------------------


def generator(kafka: Mapping[str, str], topic: str, rate: float, infile: str, outfile: str) -> None:
    """Send the (key, value, event id) in ``infile`` at ``rate``; write (id, sent at) out."""
    from confluent_kafka import Producer

    from streams.producer import warm_up

    with open(infile, "rb") as f:
        messages: list[tuple[bytes, bytes, str]] = pickle.load(f)
    producer = Producer(
        {
            **kafka,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 1,
            "compression.type": "lz4",
        }
    )
    warm_up(producer, topic)
    sent: list[tuple[str, float]] = []
    produce, poll, wall, clock = producer.produce, producer.poll, time.time, time.perf_counter
    n = len(messages)
    i = 0
    started = clock()
    worst_lag = 0.0
    while i < n:
        now = clock() - started
        due = min(n, int(now * rate) + 1)
        if due > i + 1:
            worst_lag = max(worst_lag, (due - i - 1) / rate)
        while i < due:
            key, value, event_id = messages[i]
            try:
                produce(topic, key=key, value=value, headers=[(ID_HEADER, event_id.encode())])
            except BufferError:
                poll(0.001)
                continue
            sent.append((event_id, wall()))
            i += 1
        poll(0)
        pause = i / rate - (clock() - started)
        if pause > 0:
            time.sleep(pause)
    elapsed = clock() - started
    producer.flush(60)
    with open(outfile, "w") as f:
        json.dump({"sent": sent, "seconds": elapsed, "worst_lag_s": worst_lag}, f)


# -- the receiver process -------------------------------------------------------------


def receiver(
    kafka: Mapping[str, str], topic: str, partitions: int, outfile: str, ready: str
) -> None:
    """Note when each message arrives from now on; on SIGTERM write (id, received at)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            **kafka,
            "group.id": f"bench-latency-{secrets.token_hex(4)}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": stack.FETCH_WAIT_MS,
        }
    )
    parts = []
    for p in range(partitions):
        parts.append(TopicPartition(topic, p, stack.high_watermark(consumer, topic, p)))
    consumer.assign(parts)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    got: list[tuple[float, bytes | None, list[tuple[str, bytes]] | None, int]] = []
    Path(ready).write_text("ready")
    poll = consumer.poll
    while not stopping:
        msg = poll(0.05)  # returns as soon as a message is there: its receipt time is now
        if msg is not None and not msg.error():
            # and the message's CreateTime: when the relay (or peer) called produce
            got.append((time.time(), msg.value(), msg.headers(), msg.timestamp()[1]))
    consumer.close()
    with open(outfile, "wb") as f:
        pickle.dump(got, f)


# -- the API watcher process ----------------------------------------------------------


def api_watcher(
    s: Settings, url: str, keys_file: str, sample: int, outfile: str, ready: str, switch: str
) -> None:
    """For one score-event in ``sample``, poll GET /leads/{id} until the API shows a score
    at least as new (its log position); write (caused_by_event_id, seen at) on SIGTERM.
    Score-events that come while the file ``switch`` does not exist are not watched.

    Four threads, each with its own keep-alive connection, poll the open watches every
    2 ms: a light client, so the watching disturbs the machine little.
    """
    import http.client
    import queue
    import threading
    import zlib
    from urllib.parse import urlsplit

    import orjson
    from confluent_kafka import Consumer, TopicPartition

    from streams.wire import SchemaCatalog

    keys: dict[str, str] = json.loads(Path(keys_file).read_text())
    catalog = SchemaCatalog.from_settings(s)
    host = urlsplit(url)
    consumer = Consumer(
        {
            **s.kafka,
            "group.id": f"bench-latency-api-{secrets.token_hex(4)}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": stack.FETCH_WAIT_MS,
        }
    )
    topic = s.topic_score_events
    parts = []
    for p in range(s.topic_partitions):
        parts.append(TopicPartition(topic, p, stack.high_watermark(consumer, topic, p)))
    consumer.assign(parts)
    watches: queue.Queue[tuple[str, str, int, str] | None] = queue.Queue()
    seen: list[tuple[str, float]] = []
    stopping = threading.Event()

    def poller() -> None:
        conn = http.client.HTTPConnection(host.hostname, host.port, timeout=10)
        while not stopping.is_set():
            try:
                item = watches.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is None:
                return
            org, lead, position, cause = item
            try:
                conn.request(
                    "GET", f"/leads/{lead}", headers={"Authorization": f"Bearer {keys[org]}"}
                )
                response = conn.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(host.hostname, host.port, timeout=10)
                watches.put(item)
                continue
            score = orjson.loads(body).get("score") if response.status == 200 else None
            if score and int(score.get("position", 0)) >= position:
                seen.append((cause, time.time()))
            else:
                time.sleep(0.002)
                watches.put(item)

    threads = [threading.Thread(target=poller, daemon=True) for _ in range(4)]
    for th in threads:
        th.start()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    Path(ready).write_text("ready")
    on = Path(switch)
    while not stopping.is_set():
        msg = consumer.poll(0.05)
        if msg is None or msg.error():
            continue
        if zlib.crc32(msg.key() or b"") % sample or not on.exists():
            continue  # the sample is by lead, so a watched lead's scores are all watched
        r = catalog.decode(msg.value())
        watches.put((r["org_id"], r["lead_id"], int(r["position"]), r["caused_by_event_id"]))
    for th in threads:
        th.join(2)
    consumer.close()
    with open(outfile, "w") as f:
        json.dump(seen, f)


# -- the bench ------------------------------------------------------------------------


@dataclass
class Segment:
    # "ours", "peer", "api" (ours again, the API watched), "load" (the generator alone, to
    # a topic nobody reads), "backlog" (ours, one unpaced burst) or "backlog load"
    who: str
    rate: int  # events/s offered; UNPACED for the bursts
    run: int
    sent_file: Path
    events: int
    # CPU seconds per process group while the segment was sent and drained (bench/cpu.py)
    cpu: dict[str, float] = dataclasses.field(default_factory=dict)
    batches: float = 0.0  # the workers' batches in the segment
    scored: float = 0.0  # and the scores they recorded


def _start_receiver(s: Settings, topic: str, tmp: Path, name: str):  # type: ignore[no-untyped-def]
    out, ready = tmp / f"recv-{name}.pickle", tmp / f"recv-{name}.ready"
    proc = stack.start_process(
        ["-m", "bench.latency", "recv", topic, str(s.topic_partitions), str(out), str(ready)],
        s,
        s.run_path / "logs" / "bench" / f"latency-recv-{name}.log",
    )
    stack.wait_for(ready.exists, 60, f"the {name} receiver")
    return proc, out


def _send(s: Settings, topic: str, rate: int, chunk: list, tmp: Path, name: str) -> Path:  # type: ignore[type-arg]
    timeout = len(chunk) / rate * 10 + 120
    infile, outfile = tmp / f"{name}.in.pickle", tmp / f"{name}.sent.json"
    with infile.open("wb") as f:
        pickle.dump(chunk, f)
    proc = stack.start_process(
        ["-m", "bench.latency", "gen", topic, str(rate), str(infile), str(outfile)],
        s,
        s.run_path / "logs" / "bench" / "latency-gen.log",
    )
    proc.wait(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"generator exited with {proc.returncode}")
    infile.unlink()
    return outfile


def _api_keys(s: Settings, orgs: list[str]) -> dict[str, str]:
    import asyncio

    from adapters import tenancy

    async def create(db) -> dict[str, str]:  # type: ignore[no-untyped-def]
        return {org: (await tenancy.create_api_key(db, org, name="bench"))[1] for org in orgs}

    return asyncio.run(tenancy.with_connection(s.pg_dsn, create))


def _healthy(url: str, proc) -> bool:  # type: ignore[no-untyped-def]
    import urllib.request

    if proc.poll() is not None:
        raise RuntimeError(f"the query API exited with {proc.returncode}")
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def percentiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        v = values[0] if values else float("nan")
        return v, v, v
    q = statistics.quantiles(values, n=100, method="inclusive")
    return statistics.median(values), q[94], q[98]


def main() -> None:
    body = measure(stack.base_settings(), RATES, SECONDS, RUNS)
    console.print(body)
    console.print(f"written to {write_results('latency', body)}")


def measure(
    base: Settings,
    rates: list[int],
    seconds: float,
    runs: int,
    warmup_s: float = WARMUP_SECONDS,
    backlog: int = BACKLOG,
) -> str:
    """Run the latency bench; returns the results body (markdown)."""
    # ours (and the peer, and the load alone), then the API; and the backlog burst
    per_run = 2 * sum(int(r * seconds) for r in rates) + backlog
    warmup = max(1, int(500 * warmup_s))
    profile_rate = profiled_rate(rates)
    profiled = int(profile_rate * seconds) + backlog if PROFILE else 0
    total = warmup + runs * per_run + profiled
    console.rule(f"[bold]latency at {', '.join(f'{r:,}' for r in rates)} events/s")
    with console.status(f"generating and encoding {total:,} lead-events"):
        events = list(generate(20, max(1, total // 10), total, seed=17))
        encoded = stack.encoded(base, events)
        messages = [(k, v, e.event_id) for (k, v), e in zip(encoded, events, strict=True)]
        orgs = sorted({e.org_id for e in events})
        del events, encoded

    tag = secrets.token_hex(3)
    ours_in, peer_in, peer_out, load_in = (
        f"lead-events-bench-lat-{tag}",
        f"bench-lat-peer-in-{tag}",
        f"bench-lat-peer-out-{tag}",
        f"bench-lat-load-{tag}",  # nobody reads it: the load alone
    )
    topics = [ours_in, peer_in, peer_out, load_in]
    services.ensure_topics(base.kafka, topics, base.topic_partitions)
    s = dataclasses.replace(
        stack.engine_settings(stack.isolated(base, "lat", ours_in)),
        api_port=stack.free_port(),
        api_key_rate=0,  # the API's rate limits are not what this measures
        api_ip_rate=0,
    )
    stack.register_orgs(s, orgs)
    keys = _api_keys(s, orgs)
    logs = base.run_path / "logs" / "bench"
    tmp = Path(tempfile.mkdtemp(prefix="leadscore-bench-latency-"))
    procs = []
    segments: list[Segment] = []
    profiles: dict[str, tuple[str, int]] = {}  # column -> (py-spy raw text, lead-events)
    try:
        workers, ports = stack.start_workers(s, logs, "latency", WORKERS)
        procs += workers
        outbox = stack.start_outbox(s, logs, "latency")
        procs += outbox
        # The query API, which also runs the ClickHouse projection (embedded chDB).
        api = stack.start_process(["-m", "leadscore.cli", "api"], s, logs / "latency-api.log")
        procs.append(api)
        api_url = f"http://127.0.0.1:{s.api_port}"
        stack.wait_for(lambda: _healthy(api_url, api), 120, "the query API")
        peer = stack.start_process(
            ["-m", "bench.peers", "raw", peer_in, peer_out, f"bench-lat-{tag}", "6"],
            base,
            logs / "latency-peer.log",
        )
        procs.append(peer)
        recv_ours, ours_file = _start_receiver(s, s.topic_score_events, tmp, "ours")
        recv_peer, peer_file = _start_receiver(base, peer_out, tmp, "peer")
        procs += [recv_ours, recv_peer]
        keys_file, api_file, api_ready = tmp / "keys.json", tmp / "api.json", tmp / "api.ready"
        api_on = tmp / "api.on"
        keys_file.write_text(json.dumps(keys))
        watcher = stack.start_process(
            ["-m", "bench.latency", "api", api_url, str(keys_file), str(API_SAMPLE),
             str(api_file), str(api_ready), str(api_on)],
            s,
            logs / "latency-api-watcher.log",
        )  # fmt: skip
        procs.append(watcher)
        stack.wait_for(api_ready.exists, 60, "the API watcher")
        named = {w.pid: "worker" for w in workers}
        named.update(zip((p.pid for p in outbox), stack.OUTBOX_NAMES, strict=False))
        named[api.pid] = "query API (+ ClickHouse projection)"
        for p in (recv_ours, recv_peer, watcher, peer):
            named[p.pid] = "bench: receivers, API watcher, peer"
        positions = stack.LogPositions(s.pg_dsn)
        marks = stack.Watermarks(base.kafka, peer_out, base.topic_partitions)
        sent = {"ours": 0, "peer": 0}

        def drained(who: str) -> bool:
            if who in LOADS:
                return True  # nobody reads it: sent is done
            if who in ("api", "backlog"):
                return drained("ours")
            if who == "peer":
                return marks.count() >= sent["peer"]
            m = stack.scrape_sum(ports)
            if m["received"] < sent["ours"]:
                return False
            if positions.published(s.topic_score_events) < positions.last_score():
                return False
            # and every read model (the ClickHouse one writes a second after the head), so
            # a segment's CPU holds all of its work and none is left for the next one
            read_models = positions.projections()
            return len(read_models) >= READ_MODELS and min(read_models.values()) >= positions.head()

        def segment(who: str, rate: int, run: int, chunk: list, keep: bool = True) -> None:  # type: ignore[type-arg]
            topic = load_in if who in LOADS else peer_in if who == "peer" else ours_in
            if who == "api":
                api_on.touch()
            counts = stack.scrape_sum(ports)
            before = cpu.snapshot()
            out = _send(s, topic, rate, chunk, tmp, f"{who.replace(' ', '-')}-{rate}-{run}")
            if who not in LOADS:
                sent["peer" if who == "peer" else "ours"] += len(chunk)
            stack.wait_for(lambda: drained(who), 600, f"{who} to catch up", every=0.2)
            spent = cpu.spent(before, cpu.snapshot(), named)
            after = stack.scrape_sum(ports)
            batches, scored = (after[k] - counts[k] for k in ("batches", "scored"))
            time.sleep(0.5)  # the last score-events reach the receiver (and the API)
            api_on.unlink(missing_ok=True)
            if keep:
                segments.append(Segment(who, rate, run, out, len(chunk), spent, batches, scored))

        with console.status("warming up (worker joining its group, first batches)"):
            stack.wait_for(lambda: stack.scrape(s.metrics_port)["received"] >= 0, 60, "metrics")
            for who in ("ours", "peer"):
                _send(s, ours_in if who == "ours" else peer_in, 500, messages[:warmup], tmp, who)
                sent[who] += warmup
            stack.wait_for(lambda: drained("ours") and drained("peer"), 300, "warm-up")
        at = warmup
        for run in range(runs):
            for rate in rates:
                n = int(rate * seconds)
                chunk, again = messages[at : at + n], messages[at + n : at + 2 * n]
                at += 2 * n
                for who, events in (
                    ("ours", chunk), ("load", chunk), ("peer", chunk), ("api", again)
                ):  # fmt: skip
                    with console.status(f"run {run + 1}/{runs}: {who} at {rate:,} events/s"):
                        segment(who, rate, run, events)
                console.print(f"run {run + 1}/{runs}: {rate:,} events/s done")
            burst, at = messages[at : at + backlog], at + backlog
            for who in ("backlog", "backlog load"):
                with console.status(f"run {run + 1}/{runs}: {who}, {len(burst):,} at once"):
                    segment(who, UNPACED, run, burst)
        if PROFILE:
            n = int(profile_rate * seconds)
            live, burst = messages[at : at + n], messages[at + n : at + n + backlog]
            for column, rate, chunk in (
                (f"live, {profile_rate:,}/s", profile_rate, live),
                ("backlog (one burst)", UNPACED, burst),
            ):
                with console.status(f"profiling the worker: {column}"):
                    out = tmp / f"spy-{rate}.txt"
                    spy = profiling.record(workers[0].pid, out)
                    try:
                        segment("ours" if rate != UNPACED else "backlog", rate, runs, chunk, False)
                    finally:
                        profiling.stop(spy)
                    profiles[column] = (out.read_text() if out.exists() else "", len(chunk))
        positions.close()
        marks.close()
    finally:
        for p in reversed(procs):
            stack.stop_process(p)
        stack.cleanup(base, s)
        stack.delete_topics(base.kafka, topics)

    body = report(base, segments, ours_file, peer_file, api_file, runs, rates, seconds, profiles)
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    return body


def _receipts(
    path: Path, who: str, base: Settings
) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """event id -> first receipt time; and for ours, event id -> (scored at, produced at):
    the worker's clock when its batch began scoring (the score-event's ``occurred_at``) and
    the relay's when it handed the score-event to its producer (the message's CreateTime),
    which split the latency into hops (:func:`hop_table`)."""
    from streams.wire import SchemaCatalog

    with path.open("rb") as f:
        got = pickle.load(f)
    first: dict[str, float] = {}
    marks: dict[str, tuple[float, float]] = {}
    catalog = SchemaCatalog.from_settings(base) if who == "ours" else None
    for at, value, headers, created_ms in got:
        if catalog is not None:
            record = catalog.decode(value)
            eid = record["caused_by_event_id"]
            scored = record["occurred_at"]
            scored_s = scored.timestamp() if hasattr(scored, "timestamp") else scored / 1000
            if eid and eid not in marks:
                marks[eid] = (scored_s, created_ms / 1000)
        else:
            eid = dict(headers or []).get(ID_HEADER, b"").decode()
        if eid and eid not in first:
            first[eid] = at
    return first, marks


HOPS = (
    ("sent → scored", "broker in, the worker's fetch and batch, decode, load"),
    ("scored → produced", "score, save and commit, NOTIFY, the relay's read"),
    ("produced → received", "the relay's producer (linger 5 ms, acks=all), broker out"),
)


def hop_medians(
    segments: list[Segment],
    received: dict[str, float],
    marks: dict[str, tuple[float, float]],
) -> dict[int, list[tuple[float, float]]]:
    """rate -> each hop's (p50, p99) in ms, medians of the runs (HOPS' order)."""
    per_rate: dict[int, list[list[tuple[float, float]]]] = {}
    for seg in segments:
        if seg.who != "ours":
            continue
        data = json.loads(seg.sent_file.read_text())
        hops: list[list[float]] = [[], [], []]
        for eid, at in data["sent"]:
            if eid not in received or eid not in marks:
                continue
            scored, produced = marks[eid]
            for i, (a, b) in enumerate(
                ((at, scored), (scored, produced), (produced, received[eid]))
            ):
                hops[i].append((b - a) * 1000)
        per_rate.setdefault(seg.rate, []).append(
            [(percentiles(h)[0], percentiles(h)[2]) if h else (float("nan"),) * 2 for h in hops]
        )
    return {
        rate: [
            (
                Spread.of([r[i][0] for r in runs]).median,
                Spread.of([r[i][1] for r in runs]).median,
            )
            for i in range(len(HOPS))
        ]
        for rate, runs in per_rate.items()
    }


def hop_table(hops: dict[int, list[tuple[float, float]]], rates: list[int]) -> list[str]:
    """Where the latency goes: each hop's p50 and p99 (ms, medians of the runs)."""
    lines = [
        "",
        "Where the latency goes, hop by hop (ms, p50 / p99, medians of the runs; the marks are "
        "the score-event's `occurred_at`, the worker's clock as its batch began scoring, and "
        "its Kafka CreateTime, the relay's clock as it produced it; one machine, one clock, "
        "CreateTime in whole ms):",
        "",
        "| offered events/s | " + " | ".join(f"{name} ({what})" for name, what in HOPS) + " |",
        "|---|" + "---|" * len(HOPS),
    ]
    for rate in rates:
        if rate in hops:
            cells = [f"{p50:,.1f} / {p99:,.1f}" for p50, p99 in hops[rate]]
            lines.append(f"| {rate:,} | " + " | ".join(cells) + " |")
    return lines


def report(
    base: Settings,
    segments: list[Segment],
    ours: Path,
    peer: Path,
    api: Path,
    runs: int,
    rates: list[int],
    seconds: float,
    profiles: Mapping[str, tuple[str, int]] | None = None,
) -> str:
    ours_got, marks = _receipts(ours, "ours", base)
    # The "api" segments run our engine too (with the API watcher on), so their
    # score-events arrive in ours' receipts; only the peer has a topic of its own.
    received = {
        "ours": ours_got,
        "api": ours_got,
        "peer": _receipts(peer, "peer", base)[0],
    }
    seen_in_api: dict[str, float] = {}
    for eid, at in json.loads(api.read_text()) if api.exists() else []:
        seen_in_api.setdefault(eid, at)
    rows: dict[tuple[str, int], list[dict[str, float]]] = {}
    for seg in segments:
        if seg.who not in received:
            continue  # the load alone and the backlog: CPU only (cpu_table)
        data = json.loads(seg.sent_file.read_text())
        got = received[seg.who]
        lat = [(got[eid] - at) * 1000 for eid, at in data["sent"] if eid in got]
        p50, p95, p99 = percentiles(lat)
        via_api = [(seen_in_api[eid] - at) * 1000 for eid, at in data["sent"] if eid in seen_in_api]
        a50, _a95, a99 = percentiles(via_api)
        rows.setdefault((seg.who, seg.rate), []).append(
            {
                "p50": p50, "p95": p95, "p99": p99,
                "achieved": len(data["sent"]) / data["seconds"],
                "lag": data["worst_lag_s"] * 1000,
                "share": len(lat) / max(1, len(data["sent"])),
                "samples": len(lat),
                "api_p50": a50, "api_p99": a99, "api_samples": len(via_api),
            }
        )  # fmt: skip
    lines = [
        f"Open-loop generator (one process, a few sends per 1 ms tick, linger.ms=1, acks=all), "
        f"{seconds:g} s per rate and run, {runs} runs. Engine: {stack.TOPOLOGY_TEXT}, with "
        f"{WORKERS} worker process(es) in one group (LEADSCORE_BENCH_LATENCY_WORKERS); the "
        "query API beside it, which runs the ClickHouse projection. The worker's Kafka "
        f"fetches wait for {base.consumer_fetch_min_bytes:,} bytes or "
        f"{base.consumer_fetch_max_wait_ms:,} ms (LEADSCORE_CONSUMER_FETCH_MIN_BYTES, "
        "LEADSCORE_CONSUMER_FETCH_MAX_WAIT_MS). "
        "Latency = score-event received − lead-event sent, ms.\n",
        "| offered events/s | achieved | p50 | p95 | p99 (min–max) | samples (share of events) "
        "| peer p50 | peer p95 | peer p99 | p99 / peer p99 | target p99 "
        "| via the API p50 | API p99 | API samples |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rate in rates:
        ours_runs, peer_runs = rows.get(("ours", rate), []), rows.get(("peer", rate), [])
        api_runs = rows.get(("api", rate), [])
        if not ours_runs:
            continue

        def med(rs: list[dict[str, float]], k: str) -> float:
            return Spread.of([r[k] for r in rs]).median if rs else float("nan")

        p99 = Spread.of([r["p99"] for r in ours_runs])
        target = TARGETS_MS.get(rate)
        verdict = (
            f"< {target:.0f} ms: {'met' if p99.median < target else 'not met'}" if target else "—"
        )
        lines.append(
            f"| {rate:,} | {med(ours_runs, 'achieved'):,.0f} | {med(ours_runs, 'p50'):,.0f} | "
            f"{med(ours_runs, 'p95'):,.0f} | "
            f"**{p99.median:,.0f}** ({p99.low:,.0f}–{p99.high:,.0f}) | "
            f"{med(ours_runs, 'samples'):,.0f} ({med(ours_runs, 'share'):.0%}) | "
            f"{med(peer_runs, 'p50'):,.1f} | {med(peer_runs, 'p95'):,.1f} | "
            f"{med(peer_runs, 'p99'):,.1f} | "
            f"{p99.median / med(peer_runs, 'p99'):,.0f}× | {verdict} | "
            f"{med(api_runs, 'api_p50'):,.0f} | {med(api_runs, 'api_p99'):,.0f} | "
            f"{med(api_runs, 'api_samples'):,.0f} |"
        )
    hops = hop_medians(segments, ours_got, marks)
    figures = CpuFigures(segments)
    lines += hop_table(hops, rates)
    lines += cpu_table(figures, rates)
    worst = max((r["lag"] for rs in rows.values() for r in rs), default=0.0)
    lines += [
        "",
        "Peer: a raw confluent-kafka consume → produce loop (bench/peers.py) fed the same events "
        "by the same generator, timed by the same receiver. The generator fell at most "
        f"{worst:,.1f} ms behind its schedule. Samples are the lead-events that changed a score "
        "(a score-event is published only for a stored change). Via the API, in a segment "
        "of its own after ours at each rate (as many new lead-events at the same rate; ours' "
        "latency and CPU above are measured with the watcher off): for the leads "
        f"of one score-event in {API_SAMPLE}, a watcher process polls GET /leads/{{id}} every "
        "2 ms (4 keep-alive connections) until the lead's score is at least as new as that "
        "score-event: produced → visible through the query API (PostgreSQL and Redis read "
        "models, the API's hot cache evicted by their change notices).",
    ]
    p99s = {rate: Spread.of([r["p99"] for r in rows[("ours", rate)]]).median
            for rate in rates if rows.get(("ours", rate))}  # fmt: skip
    lines += obstacles(figures, p99s, hops, profiles or {})
    if profiles:
        lines += [
            "",
            "### The worker's profile, live against the backlog",
            "",
            "py-spy sampling the worker process in one more segment of each kind (not in the "
            "tables above: sampling costs CPU), µs of thread time per lead-event by stage, "
            f"{profiling.RATE} samples a second per thread (bench/profile.py; the Kafka "
            "consumer stage is Faust's and aiokafka's loop on the main thread, the rest the "
            "event-store thread's work and the threads' waits):",
            "",
            profiling.compare(profiles).rstrip("\n"),
        ]
    return "\n".join(lines)


def profiled_rate(rates: list[int]) -> int:
    """The live rate the profiled segment runs at: the ratio target's, else the highest."""
    return LIVE_TO_BACKLOG[0] if LIVE_TO_BACKLOG[0] in rates else max(rates)


def obstacles(
    figures: CpuFigures,
    p99s: Mapping[int, float],
    hops: Mapping[int, list[tuple[float, float]]],
    profiles: Mapping[str, tuple[str, int]],
) -> list[str]:
    """For each target not met, what stands in the way, in the figures measured."""
    found: list[str] = []
    for rate, target in sorted(TARGETS_MS.items()):
        p99 = p99s.get(rate)
        if p99 is None or p99 < target or not figures.of("ours", rate):
            continue
        why = (
            f"- **p99 < {target:,.0f} ms at {rate:,}/s** (measured {p99:,.0f} ms): the machine "
            f"was {figures.idle('ours', rate):.0%} idle while ours was sent and caught up"
        )
        if figures.of("load", rate):
            net = figures.net("ours", "load", rate)
            why += (
                f", and the engine spent {net:,.0f} µs of CPU per lead-event net of the load, "
                f"{net * rate / 1e6:.2f} of the machine's {os.cpu_count()} cores at this rate"
            )
        if rate in hops:
            slowest = max(range(len(HOPS)), key=lambda i: hops[rate][i][1])
            why += (
                f"; the hop with the largest p99 was {HOPS[slowest][0]} "
                f"({hops[rate][slowest][1]:,.0f} ms; {HOPS[slowest][1]})"
            )
        found.append(
            why + f"; the worker's batches held {figures.batch('ours', rate):,.0f} lead-events."
        )
    rate, most = LIVE_TO_BACKLOG
    if (
        figures.of("load", rate)
        and figures.of("backlog", UNPACED)
        and figures.of("backlog load", UNPACED)
    ):
        ratio = figures.net("ours", "load", rate) / figures.net("backlog", "backlog load", UNPACED)
        if ratio > most:
            cells = {
                g: (
                    figures.net("ours", "load", rate, g),
                    figures.net("backlog", "backlog load", UNPACED, g),
                )
                for g in CPU_GROUPS
                if not g.startswith("bench")
            }
            more = sorted(cells, key=lambda g: cells[g][0] - cells[g][1], reverse=True)[:3]
            why = (
                f"- **live ÷ backlog ≤ {most:g}× at {rate:,}/s** (measured {ratio:.2f}×): per "
                "lead-event, each net of the same process group's CPU in the load alone, live "
                "against the burst: "
                + ", ".join(f"{g} {cells[g][0]:,.0f} against {cells[g][1]:,.0f} µs" for g in more)
                + f" (the largest differences); the worker's batches held "
                f"{figures.batch('ours', rate):,.0f} lead-events against "
                f"{figures.batch('backlog', UNPACED):,.0f}, and "
                f"{figures.scored('ours', rate):.2f} scores were recorded per lead-event against "
                f"{figures.scored('backlog', UNPACED):.2f} (a lead's several lead-events in one "
                "batch make one score)"
            )
            if len(profiles) == 2:
                (column, (lt, ln)), (_b, (bt, bn)) = profiles.items()
                lc, bc = profiling.per_event(lt, ln), profiling.per_event(bt, bn)
                grew = sorted(
                    ((lc.get(st, 0.0) - bc.get(st, 0.0), st) for st in lc
                     if not st.startswith("waiting")),
                    reverse=True,
                )[:3]  # fmt: skip
                why += "; in the worker's profile the stages that cost more per lead-event " + (
                    f"{column}: " + ", ".join(f"{st} +{d:,.0f} µs" for d, st in grew if d > 0)
                )
            found.append(why + ".")
    if not found:
        return []
    return ["", "### What stands in the way of the targets not met", "", *found]


class CpuFigures:
    """The segments' CPU figures, medians of the runs: µs per lead-event sent, by process
    group or net of the load; the idle share; the worker's batches and scores."""

    def __init__(self, segments: list[Segment]) -> None:
        self.segments = segments

    def of(self, who: str, rate: int) -> list[Segment]:
        return [g for g in self.segments if g.who == who and g.rate == rate and g.cpu]

    def _median(self, who: str, rate: int, value: Callable[[Segment], float]) -> float:
        return statistics.median(value(g) for g in self.of(who, rate))

    def per_event(self, who: str, rate: int, group: str) -> float:
        return 1e6 * self._median(who, rate, lambda g: g.cpu.get(group, 0.0) / g.events)

    def net(self, who: str, load: str, rate: int, group: str = MACHINE) -> float:
        """A process group (the whole machine by default) less the same group in the load
        alone, run by run (µs per lead-event); the median."""
        loads = {x.run: x for x in self.of(load, rate)}
        return 1e6 * statistics.median(
            o.cpu.get(group, 0.0) / o.events
            - loads[o.run].cpu.get(group, 0.0) / loads[o.run].events
            for o in self.of(who, rate)
        )

    def idle(self, who: str, rate: int) -> float:
        return self._median(who, rate, lambda g: cpu.idle_share(g.cpu))

    def batch(self, who: str, rate: int) -> float:
        """Lead-events per worker batch, mean."""
        return self._median(who, rate, lambda g: g.events / max(1.0, g.batches))

    def scored(self, who: str, rate: int) -> float:
        """Scores recorded per lead-event."""
        return self._median(who, rate, lambda g: g.scored / g.events)


def cpu_table(f: CpuFigures, rates: list[int]) -> list[str]:
    """CPU µs per lead-event by process group for our segments at each rate and for the
    backlog burst; the load alone, ours net of it, and live ÷ backlog (net the same way)."""
    shown = [r for r in rates if f.of("ours", r)]
    if not shown:
        return []
    with_load = all(f.of("load", r) for r in shown)
    burst = with_load and bool(f.of("backlog", UNPACED)) and bool(f.of("backlog load", UNPACED))
    # (ours' segments, their load's) per column: each rate, then the burst
    columns = [("ours", "load", r) for r in shown]
    if burst:
        columns.append(("backlog", "backlog load", UNPACED))

    def row(name: str, cell: Callable[[str, str, int], str]) -> str:
        return f"| {name} | " + " | ".join(cell(*c) for c in columns) + " |"

    def whole(who: str, _load: str, rate: int) -> str:
        # the burst ends as soon as it is caught up: no idle share to speak of
        idle = "" if who != "ours" else f" (idle {f.idle(who, rate):.0%})"
        return f"**{f.per_event(who, rate, MACHINE):,.0f}**{idle}"

    def batch(who: str, _load: str, rate: int) -> str:
        return f"{f.batch(who, rate):,.0f}"

    lines = [
        "",
        "Where the machine's CPU went while ours was sent each rate and caught up, the relay "
        "and every read model (ClickHouse's too) at the head (bench/cpu.py; µs per lead-event "
        "sent, medians of the runs; the generator counts under other processes, with the "
        "bench's own polling):",
        "",
        "| process group | "
        + " | ".join(f"{r:,}/s" for r in shown)
        + (" | backlog (one burst) |" if burst else " |"),
        "|---|" + "---|" * len(columns),
    ]
    for group in CPU_GROUPS:
        lines.append(row(group, lambda who, _l, r, g=group: f"{f.per_event(who, r, g):,.0f}"))
    lines += [
        row("**all, whole machine**", whole),
        row("*the worker's batches: lead-events per batch, mean*", batch),
        row("*scores recorded per lead-event*", lambda w, _l, r: f"{f.scored(w, r):.2f}"),
    ]
    if not with_load:
        return lines
    lines += [
        row("the load alone", lambda _w, load, r: f"{f.per_event(load, r, MACHINE):,.0f}"),
        row("**ours net of the load**", lambda who, load, r: f"**{f.net(who, load, r):,.0f}**"),
    ]
    if not burst:
        return lines
    backlog = f.net("backlog", "backlog load", UNPACED)
    lines.append(
        row(
            "live ÷ backlog",
            lambda who, load, r: "—" if r == UNPACED else f"{f.net(who, load, r) / backlog:,.1f}×",
        )
    )
    rate, most = LIVE_TO_BACKLOG
    verdict = ""
    if rate in shown:
        ratio = f.net("ours", "load", rate) / backlog
        met = "met" if ratio <= most else "not met"
        verdict = f" Target: at most {most:g}× at {rate:,}/s: {met} ({ratio:.2f}×)."
    bursts = f.of("backlog", UNPACED)
    lines += [
        "",
        "The load alone: the same lead-events sent by the same generator at the same rate to "
        "a topic nobody reads, whole machine (the generator process, the broker taking its "
        "produce requests, the engine idle); ours net of the load: ours' whole machine less "
        "that, run by run.",
        "",
        f"Backlog, the same engine: {statistics.median(g.events for g in bursts):,.0f} "
        f"lead-events sent in one unpaced burst, measured until caught up: **{backlog:,.0f} "
        "µs** of whole-machine CPU per lead-event net of the burst's load (the burst alone: "
        f"{f.per_event('backlog load', UNPACED, MACHINE):,.0f} µs per event; medians of "
        f"{len(bursts)} runs). Live figures above are net of their load the same way, so live "
        "÷ backlog compares the engine's work at a live rate with the same work on a backlog."
        f"{verdict}",
    ]
    return lines


if __name__ == "__main__":
    kind, *args = sys.argv[1:] or ["bench"]
    if kind == "gen":
        s = Settings.from_env()
        topic, rate, infile, outfile = args
        generator(s.kafka, topic, float(rate), infile, outfile)
    elif kind == "api":
        url, keys_file, sample, outfile, ready, switch = args
        api_watcher(Settings.from_env(), url, keys_file, int(sample), outfile, ready, switch)
    elif kind == "recv":
        s = Settings.from_env()
        topic, partitions, outfile, ready = args
        receiver(s.kafka, topic, int(partitions), outfile, ready)
    else:
        main()
