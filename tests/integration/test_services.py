"""`leadscore services` against the real local Kafka, PostgreSQL and Redis."""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
import redis
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from typer.testing import CliRunner

from adapters.settings import Settings, get_settings
from adapters.topics import delete_topics
from devtools import services
from devtools.services import postgres
from devtools.services.cli import app

pytestmark = pytest.mark.integration

RUNNING_OURS = "running(started by us)"


@pytest.fixture(scope="module")
def stack() -> Settings:
    """The shared services: started if needed, never stopped here (other tests use them)."""
    s = get_settings()
    services.up(s)
    return s


@pytest.fixture
def topic(stack: Settings) -> Iterator[str]:
    name = f"test-services-{uuid.uuid4().hex[:12]}"
    yield name
    delete_topics(stack.kafka, [name], timeout=10)


def _pids(settings: Settings) -> dict[str, int | None]:
    return {s.name: s.pid for s in services.status(settings)}


def test_second_up_is_a_fast_no_op(stack: Settings) -> None:
    before = _pids(stack)
    started = time.monotonic()
    services.up(stack)
    elapsed = time.monotonic() - started
    assert elapsed < 5.0, f"warm up took {elapsed:.1f}s"
    assert _pids(stack) == before


def test_status_reports_every_service_running(stack: Settings) -> None:
    rows = {s.name: s for s in services.status(stack)}
    assert set(rows) == {"kafka", "postgres", "registry", "redis"}
    for row in rows.values():
        assert row.running, row
        if row.state == RUNNING_OURS:
            assert row.pid is not None
            # Ours live in the run dir, except PostgreSQL's as root: its home is a
            # 0700 folder under /var/tmp, named after the run dir (postgres.py).
            home = postgres.layout(stack).home if row.name == "postgres" else stack.run_path
            assert row.data_dir.is_relative_to(home), (row, home)
    assert rows["kafka"].address == stack.kafka_bootstrap


def test_status_command_prints_a_table(stack: Settings) -> None:
    result = CliRunner().invoke(app, ["status"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for name in ("kafka", "postgres", "redis"):
        assert name in result.output
    assert "stopped" not in result.output


def test_engine_topics_exist(stack: Settings) -> None:
    topics = (
        AdminClient(
            {
                **stack.kafka,
            }
        )
        .list_topics(timeout=10)
        .topics
    )
    for name in (stack.topic_lead_events, stack.topic_score_events, stack.topic_dlq):
        assert name in topics
        assert len(topics[name].partitions) == stack.topic_partitions


def test_ensure_topics_creates_partitions_and_is_idempotent(stack: Settings, topic: str) -> None:
    services.ensure_topics(stack.kafka, [topic], 3)
    services.ensure_topics(stack.kafka, [topic], 3)
    metadata = AdminClient(
        {
            **stack.kafka,
        }
    ).list_topics(timeout=10)
    partitions = metadata.topics[topic].partitions
    assert sorted(partitions) == [0, 1, 2]
    assert all(p.leader >= 0 for p in partitions.values())


def test_produce_consume_round_trip(stack: Settings, topic: str) -> None:
    services.ensure_topics(stack.kafka, [topic], 2)
    sent = {f"lead-{i}".encode(): f"event-{i}".encode() for i in range(20)}
    producer = Producer({**stack.kafka, "acks": "all"})
    for key, value in sent.items():
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            **stack.kafka,
            "group.id": f"{topic}-group",
            "auto.offset.reset": "earliest",
        }
    )
    received: dict[bytes, bytes] = {}
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 60
        while len(received) < len(sent) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            received[msg.key()] = msg.value()
    finally:
        consumer.close()
    assert received == sent
    assert services.round_trip(stack.kafka) < 30


def test_ensure_database_gives_an_isolated_usable_database(stack: Settings) -> None:
    name = f"test_services_{uuid.uuid4().hex[:12]}"
    dsn = services.ensure_database(stack, name)
    try:
        assert services.ensure_database(stack.pg_dsn, name) == dsn
        with psycopg.connect(dsn) as conn:
            db, user = conn.execute("SELECT current_database(), current_user").fetchone() or ()
            assert (db, user) == (name, "leadscore")
            owner = conn.execute(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", [name]
            ).fetchone()
            assert owner == ("leadscore",)
            conn.execute("CREATE TABLE probe (id int PRIMARY KEY)")
            conn.execute("INSERT INTO probe VALUES (1)")
            assert conn.execute("SELECT count(*) FROM probe").fetchone() == (1,)
    finally:
        services.drop_database(stack, name)
    with psycopg.connect(stack.pg_dsn) as conn:
        gone = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
    assert gone is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def alternate(stack: Settings) -> Iterator[Settings]:
    """A second stack in its own run dir and ports, sharing the session's Kafka as external."""
    # mkdtemp makes a 0700 directory, which PostgreSQL's files are kept out of when it
    # runs as the postgres user (test_services_any_folder.py).
    run_dir = Path(tempfile.mkdtemp(prefix="leadscore-services-"))
    alt = replace(
        stack,
        run_dir=str(run_dir),
        pg_dsn=f"postgresql://leadscore:leadscore@127.0.0.1:{_free_port()}/leadscore",
        redis_url=f"redis://127.0.0.1:{_free_port()}/0",
    )
    server_home = postgres.layout(alt).home
    try:
        yield alt
    finally:
        services.down(alt)
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(server_home, ignore_errors=True)


def test_down_stops_only_what_up_started(stack: Settings, alternate: Settings) -> None:
    shared_before = _pids(stack)
    services.up(alternate)
    rows = {s.name: s for s in services.status(alternate)}
    assert rows["kafka"].state == "running(external)"
    assert rows["kafka"].pid is None
    assert rows["postgres"].state == RUNNING_OURS
    assert rows["redis"].state == RUNNING_OURS
    with redis.Redis.from_url(alternate.redis_url) as client:
        client.set("survives-restart", "yes")

    services.down(alternate)
    rows = {s.name: s for s in services.status(alternate)}
    assert rows["postgres"].state == "stopped"
    assert rows["redis"].state == "stopped"
    assert rows["kafka"].state == "running(external)"
    assert _pids(stack) == shared_before

    services.up(alternate)
    with redis.Redis.from_url(alternate.redis_url) as client:
        assert client.get("survives-restart") == b"yes"
    with psycopg.connect(alternate.pg_dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
