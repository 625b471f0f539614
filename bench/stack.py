"""What the stream benchmarks share: an isolated engine per run, its processes, its progress.

Every run gets its own database, topics, consumer group, Redis prefix and chDB directory
(as the test suite's ``settings`` fixture does), so runs never see each other's state and
all of it is dropped afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from adapters import tenancy
from adapters.eventstore import SCORED_TOPIC
from adapters.settings import Settings, settings_env
from adapters.topics import TopicError
from adapters.topics import delete_topics as _delete_topics
from devtools import services
from devtools.engine_processes import stop_worker
from domain.events import LeadEvent
from projections.log import EVENTS_TABLE
from streams.codec import event_to_record
from streams.wire import LEAD_EVENT_SCHEMA, AvroTopic, SchemaCatalog

log = structlog.get_logger(__name__)

ROOT = Path(__file__).resolve().parent.parent
# fetch.wait.max.ms of the benches' own librdkafka consumers. The broker answers a fetch
# as soon as one byte is there (fetch.min.bytes=1), so this is only how long an empty
# fetch waits: it adds no latency. At 5 ms, four idle consumers made the broker spend
# about 0.4 of a core answering 800 empty fetches a second, beside the engine measured.
FETCH_WAIT_MS = 200


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)).replace("_", "").replace(",", ""))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_settings() -> Settings:
    """The environment's settings, services up; no decay timer (it would rescore every
    lead of a generated history, which is weeks old, in the middle of a measurement)."""
    s = dataclasses.replace(Settings.from_env(), decay_interval_s=0)
    services.up(s)
    return s


def isolated(base: Settings, kind: str, lead_events_topic: str) -> Settings:
    """Settings for one run: a fresh database, its own topics, group, Redis prefix, chDB."""
    tag = f"{kind}-{secrets.token_hex(3)}"
    dbname = f"leadscore_bench_{tag.replace('-', '_')}"
    s = dataclasses.replace(
        base,
        pg_dsn=services.ensure_database(base, dbname),
        topic_lead_events=lead_events_topic,
        topic_score_events=f"score-events-bench-{tag}",
        topic_dlq=f"lead-events-bench-{tag}.dlq",
        consumer_group=f"leadscore-bench-{tag}",
        redis_prefix=f"leadscore-bench-{tag}",
        clickhouse_dsn=f"chdb://{base.run_path}/bench-chdb-{tag}",
        metrics_port=free_port(),
    )
    services.ensure_topics(s.kafka, [s.topic_score_events, s.topic_dlq], s.topic_partitions)
    return s


def dbname_of(s: Settings) -> str:
    return s.pg_dsn.rsplit("/", 1)[-1].split("?", 1)[0]


def cleanup(base: Settings, s: Settings) -> None:
    """Drop what ``isolated`` made (never the shared lead-events topic)."""
    with contextlib.suppress(Exception):
        services.drop_database(base, dbname_of(s))
    delete_topics(s.kafka, [s.topic_score_events, s.topic_dlq])
    forget_redis_keys(s)
    shutil.rmtree(s.clickhouse_dsn.removeprefix("chdb://"), ignore_errors=True)


def delete_topics(kafka: Mapping[str, str], topics: Sequence[str]) -> None:
    """Clean-up after a run: a topic that cannot be deleted is left, not an error."""
    with contextlib.suppress(TopicError):
        _delete_topics(kafka, topics)


def forget_redis_keys(s: Settings) -> None:
    import redis

    client = redis.Redis.from_url(s.redis_url)
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{s.redis_prefix}:*", count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                client.delete(*batch)
                batch.clear()
        if batch:
            client.delete(*batch)
    finally:
        client.close()


def register_orgs(s: Settings, orgs: Sequence[str]) -> None:
    asyncio.run(
        tenancy.with_connection(
            s.pg_dsn, lambda db: tenancy.ensure_orgs(db, orgs, plan_type="bench")
        )
    )


# -- the workload, produced ahead ------------------------------------------------


def encoded(s: Settings, events: Sequence[LeadEvent]) -> list[tuple[bytes, bytes]]:
    enc = AvroTopic(SchemaCatalog.from_settings(s), s.topic_lead_events, LEAD_EVENT_SCHEMA)
    return [(e.lead_id.encode(), enc.encode(event_to_record(e))) for e in events]


def produce_ahead(
    s: Settings,
    topic: str,
    messages: Sequence[tuple[bytes, bytes]],
    progress=None,  # type: ignore[no-untyped-def]
) -> None:
    """Send ``messages`` (key, value) to ``topic`` as fast as the producer goes; all acked."""
    from streams.relay import kafka_producer

    producer = kafka_producer(s.kafka, **{"linger.ms": 20, "batch.size": 1_000_000})
    errors: list[str] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    for i, (key, value) in enumerate(messages):
        while True:
            try:
                producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 5000 == 0:
            producer.poll(0)
            if progress:
                progress(i)
    remaining = producer.flush(120)
    if errors or remaining:
        raise RuntimeError(f"producing the workload: {len(errors)} failed, {remaining} unacked")
    if progress:
        progress(len(messages))


def high_watermark(consumer: Consumer, topic: str, partition: int, wait_s: float = 20) -> int:
    """A partition's high watermark; a topic created a moment ago may not have a leader
    yet ("not leader for partition"), so that is waited out, not an error."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return int(consumer.get_watermark_offsets(TopicPartition(topic, partition), 10)[1])
        except KafkaException as exc:
            err = exc.args[0]
            waiting = err.retriable() or err.code() in _NO_LEADER_YET
            if not waiting or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


_NO_LEADER_YET = (
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
)


def topic_count(kafka: Mapping[str, str], topic: str, partitions: int) -> int:
    """Messages in ``topic`` (sum of high watermarks; the topics here start at offset 0)."""
    c = Consumer({**kafka, "group.id": "bench-watermarks"})
    try:
        return sum(high_watermark(c, topic, p) for p in range(partitions))
    finally:
        c.close()


class Watermarks:
    """A reusable reader of one topic's message count."""

    def __init__(self, kafka: Mapping[str, str], topic: str, partitions: int) -> None:
        self.topic, self.partitions = topic, partitions
        self.consumer = Consumer({**kafka, "group.id": "bench-watermarks"})

    def count(self) -> int:
        return sum(high_watermark(self.consumer, self.topic, p) for p in range(self.partitions))

    def close(self) -> None:
        self.consumer.close()


def produce_span(kafka: Mapping[str, str], topic: str, partitions: int) -> float:
    """Seconds between the first and the last message written to ``topic`` (their
    CreateTime, set by the producer that wrote them): a forwarder's own span, exact to the
    millisecond however short the run."""
    c = Consumer({**kafka, "group.id": "bench-span", "enable.auto.commit": False})
    first, last = float("inf"), 0.0
    try:
        for p in range(partitions):
            high = high_watermark(c, topic, p)
            if high == 0:
                continue
            for offset in (0, high - 1):
                c.assign([TopicPartition(topic, p, offset)])
                msg = None
                while msg is None or msg.error():
                    msg = c.poll(10)
                _kind, ts = msg.timestamp()
                first, last = min(first, ts / 1000), max(last, ts / 1000)
    finally:
        c.close()
    return last - first


# -- processes -------------------------------------------------------------------


def start_process(
    args: Sequence[str], s: Settings | None, log_path: Path, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **(settings_env(s) if s else {}), **(extra_env or {})}
    env.setdefault("LEADSCORE_LOG_LEVEL", "warning")
    with log_path.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )


stop_process = stop_worker  # SIGTERM, then SIGKILL after the timeout


# "split" (default): the worker only consumes, stores and scores; `leadscore relay` and
# `leadscore projections run postgres redis` are processes of their own, so on 2 cores
# the work is not serialised behind one GIL. "single": all of it in the worker.
TOPOLOGY = os.environ.get("LEADSCORE_BENCH_TOPOLOGY", "split")
TOPOLOGY_TEXT = {
    "split": "worker (consume, store, score) + `leadscore relay` + "
    "`leadscore projections run postgres redis`, three processes",
    "single": "one worker process with its relay and PostgreSQL/Redis projections",
}[TOPOLOGY]


def engine_settings(s: Settings) -> Settings:
    """The worker's settings for the topology measured."""
    if TOPOLOGY == "split":
        return dataclasses.replace(s, worker_relay=False, worker_projections="")
    return s


# What start_outbox's processes are, in its order (the CPU tables' process groups).
OUTBOX_NAMES = ("relay", "PostgreSQL + Redis projections")


def start_outbox(s: Settings, logs: Path, name: str) -> list[subprocess.Popen[bytes]]:
    """With the split topology: the relay and the projections (OUTBOX_NAMES), beside the
    worker."""
    if TOPOLOGY != "split":
        return []
    quiet = dataclasses.replace(s, metrics_port=0)
    return [
        start_process(["-m", "leadscore.cli", "relay"], quiet, logs / f"{name}-relay.log"),
        start_process(
            ["-m", "leadscore.cli", "projections", "run", "postgres", "redis"],
            quiet,
            logs / f"{name}-projections.log",
        ),
    ]


def start_worker(s: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    return start_process(["-m", "leadscore.cli", "worker"], s, log_path)


# Worker processes in one consumer group (partitions = scale). Two by default: one
# worker is bound by its GIL at about one core, and Faust's consumer takes half of that.
WORKERS = env_int("LEADSCORE_BENCH_WORKERS", 2)


def start_workers(
    s: Settings, logs: Path, name: str, count: int | None = None
) -> tuple[list[subprocess.Popen[bytes]], list[int]]:
    """``count`` (default ``WORKERS``) workers in one group, the first on ``s.metrics_port``;
    (processes, their metrics ports)."""
    count = WORKERS if count is None else count
    scaled = [s] + [dataclasses.replace(s, metrics_port=free_port()) for _ in range(count - 1)]
    procs = [start_worker(w, logs / f"{name}-worker-{i}.log") for i, w in enumerate(scaled)]
    return procs, [w.metrics_port for w in scaled]


def start_clickhouse_projection(s: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    """The ClickHouse read model: with embedded chDB it runs outside the worker (the API
    process runs it in production); here `leadscore projections run clickhouse`."""
    return start_process(["-m", "leadscore.cli", "projections", "run", "clickhouse"], s, log_path)


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in KiB; (0, 0) once it is gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return rss, hwm


def scrape(port: int) -> dict[str, float]:
    """The worker's Prometheus counters we watch (0 before the endpoint answers)."""
    wanted = {
        'leadscore_lead_events_total{outcome="received"}': "received",
        'leadscore_lead_events_total{outcome="applied"}': "applied",
        'leadscore_lead_events_total{outcome="dead_lettered"}': "dead_lettered",
        "leadscore_scores_recorded_total": "scored",
        "leadscore_score_events_published_total": "published",
        "leadscore_store_lock_wait_seconds_sum": "lock_wait_s",
        "leadscore_store_lock_held_seconds_sum": "lock_held_s",
        "leadscore_store_lock_held_seconds_count": "saves",
        "leadscore_batch_events_count": "batches",
    }
    out = dict.fromkeys(wanted.values(), 0.0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            body = r.read().decode()
    except OSError:
        return out
    for line in body.splitlines():
        name, _, value = line.rpartition(" ")
        if name in wanted:
            out[wanted[name]] = float(value)
    return out


def scrape_sum(ports: Sequence[int]) -> dict[str, float]:
    """The counters of ``scrape``, summed over several workers."""
    total: dict[str, float] = {}
    for port in ports:
        for key, value in scrape(port).items():
            total[key] = total.get(key, 0.0) + value
    return total


class LogPositions:
    """The event store's head and each read model's reported position, from PostgreSQL."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)

    def head(self) -> int:
        try:
            row = self.conn.execute(f"SELECT max(notification_id) FROM {EVENTS_TABLE}").fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
        return int(row[0] or 0) if row else 0

    def last_score(self) -> int:
        """Position of the newest stored score (LeadScored) in the log."""
        row = self.conn.execute(
            f"SELECT max(notification_id) FROM {EVENTS_TABLE} WHERE topic = %s", (SCORED_TOPIC,)
        ).fetchone()
        return int(row[0] or 0) if row else 0

    def scores(self) -> int:
        row = self.conn.execute(
            f"SELECT count(*) FROM {EVENTS_TABLE} WHERE topic = %s", (SCORED_TOPIC,)
        ).fetchone()
        return int(row[0]) if row else 0

    def published(self, score_topic: str) -> int:
        """The score-event relay's position (its tracking row is named after its topic)."""
        try:
            row = self.conn.execute(
                "SELECT position FROM tracking WHERE name = %s", (score_topic,)
            ).fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
        return int(row[0]) if row else 0

    def projections(self) -> dict[str, int]:
        try:
            rows = self.conn.execute("SELECT name, position FROM projection_status").fetchall()
        except psycopg.errors.UndefinedTable:
            return {}
        return {str(name): int(pos) for name, pos in rows}

    def close(self) -> None:
        self.conn.close()


@dataclass
class Timeline:
    """When work started and ended, and what the worker's memory did on the way."""

    started: float = 0.0  # monotonic time the first progress was seen
    first_count: int = 0  # events already done at ``started``
    ended: float = 0.0
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (t, count, rss KiB)

    def rate(self, total: int) -> float:
        span = self.ended - self.started
        return (total - self.first_count) / span if span > 0 else float("nan")


def wait_for(predicate, timeout: float, what: str, every: float = 0.25) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every)
    raise TimeoutError(f"timed out waiting for {what}")


@contextlib.contextmanager
def proc_guard(*procs: subprocess.Popen[bytes]) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            stop_process(p)
