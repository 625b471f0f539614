"""Hostile lead-events and messages against one real worker (issue 15, item 1).

One worker (real process, real Kafka, PostgreSQL, Redis, registry and an embedded
ClickHouse the worker projects) takes every case of ``tests/badinput/cases.py`` in turn.
For each: the engine's answer must be the case's (stored, duplicate, dead-lettered with
its reason, or refused by the broker), and a good lead-event sent right after it, on the
same partition, must be scored and reach PostgreSQL (lead_scores), Redis and ClickHouse
within 10 s, with the worker still running. At the end no read model has set anything
aside (whatever validation accepts, every sink holds) and ClickHouse holds every good
event's score.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import shutil
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from subprocess import Popen
from typing import Any

import asyncpg
import pytest
import redis

from adapters import tenancy
from adapters.settings import Settings
from devtools import services as stack
from devtools.engine_processes import stop_worker, wait_for_group
from projections import quarantine
from projections.clickhouse import connect
from streams.dlq import read_letters
from streams.relay import kafka_producer
from streams.wire import LEAD_EVENT_SCHEMA_NEWEST, AvroTopic, SchemaCatalog
from tests.badinput.cases import (
    BROKER,
    BROKER_LIMIT,
    CASES,
    DUPLICATE,
    ORG,
    OTHER_ORG,
    STORED,
    Case,
    Kit,
)
from tests.support.net import free_port
from tests.support.registry import registry_conf
from tests.support.worker import start

pytestmark = pytest.mark.e2e

DEADLINE_S = 10.0
PARTITIONS = 3


@dataclass
class Suite:
    settings: Settings
    worker: Popen[bytes]
    kit: Kit
    log: Path
    sent: int = 0
    good_leads: list[str] = field(default_factory=list)
    dead_letters: Counter[str] = field(default_factory=Counter)


@pytest.fixture(scope="module")
def suite(services: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    tag = secrets.token_hex(4)
    dbname = f"leadscore_badinput_{tag}"
    chdb = Path(services.run_path) / f"badinput-chdb-{tag}"
    s = dataclasses.replace(
        services,
        pg_dsn=stack.ensure_database(services, dbname),
        topic_lead_events=f"lead-events-{tag}",
        topic_score_events=f"score-events-{tag}",
        topic_dlq=f"lead-events-{tag}.dlq",
        topic_partitions=PARTITIONS,
        consumer_group=f"leadscore-badinput-{tag}",
        redis_prefix=f"leadscore-badinput-{tag}",
        require_registered_org=True,
        clickhouse_dsn=f"chdb://{chdb}",
        # The worker projects ClickHouse too: no API process holds the chDB directory.
        worker_projections="postgres,redis,clickhouse",
        metrics_port=free_port(),
    )
    stack.ensure_topics(
        s.kafka, [s.topic_lead_events, s.topic_score_events, s.topic_dlq], PARTITIONS
    )
    asyncio.run(
        tenancy.with_connection(s.pg_dsn, lambda c: tenancy.ensure_orgs(c, [ORG, OTHER_ORG]))
    )
    catalog = SchemaCatalog.from_settings(s)
    kit = Kit(catalog, AvroTopic(catalog, s.topic_lead_events, LEAD_EVENT_SCHEMA_NEWEST),
              datetime.now(UTC), registry=registry_conf(s))  # fmt: skip
    log = tmp_path_factory.mktemp("badinput") / "worker.log"
    worker = start(s, log)
    try:
        wait_for_group(s, worker, timeout=120)
        yield Suite(s, worker, kit, log)
    finally:
        stop_worker(worker)
        stack.drop_database(services, dbname)
        client = redis.Redis.from_url(s.redis_url)
        keys = list(client.scan_iter(match=f"{s.redis_prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
        shutil.rmtree(chdb, ignore_errors=True)


def counts(port: int) -> Counter[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read().decode()
    out: Counter[str] = Counter()
    for line in body.splitlines():
        for name, label in (
            ("leadscore_lead_events_total", "outcome"),
            ("leadscore_dead_letters_total", "reason"),
        ):
            prefix = f'{name}{{{label}="'
            if line.startswith(prefix):
                key = line[len(prefix) : line.index('"', len(prefix))]
                out[key if label == "outcome" else f"dlq:{key}"] = int(float(line.split()[-1]))
    return out


def produce(s: Settings, values: list[bytes | None], partition: int, *, limit: int) -> list[str]:
    """Send ``values`` in order to one partition; the delivery errors, by message."""
    errors: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        errors.append(err.name() if err is not None else "")

    # No compression: the broker's limit then applies to the bytes the case built.
    producer = kafka_producer(s.kafka, **{"message.max.bytes": limit, "compression.type": "none"})
    for i, value in enumerate(values):
        producer.produce(
            s.topic_lead_events, key=f"k{i}".encode(), value=value, partition=partition,
            on_delivery=delivered,
        )  # fmt: skip
    assert producer.flush(30) == 0
    return errors


async def read_models(s: Settings, org: str, lead: str) -> dict[str, Any]:
    conn = await asyncpg.connect(s.pg_dsn)
    try:
        score = await conn.fetchrow(
            "SELECT total, position FROM lead_scores WHERE org_id = $1 AND lead_id = $2", org, lead
        )
        ch = (
            await conn.fetchval("SELECT position FROM projection_status WHERE name = 'clickhouse'")
            if await conn.fetchval("SELECT to_regclass('projection_status') IS NOT NULL")
            else None
        )
        leads = {
            (r["org_id"], r["lead_id"]): dict(r)
            for r in await conn.fetch("SELECT org_id, lead_id, title, company FROM leads")
        }
        scores = {
            (r["org_id"], r["lead_id"])
            for r in await conn.fetch("SELECT org_id, lead_id FROM lead_scores")
        }
    finally:
        await conn.close()
    client = redis.Redis.from_url(s.redis_url)
    try:
        hot = client.hget(f"{s.redis_prefix}:{org}:lead:{lead}", "score")
    finally:
        client.close()
    return {
        "pg": None if score is None else float(score["total"]),
        "position": None if score is None else int(score["position"]),
        "redis": None if hot is None else float(hot),
        "clickhouse_position": ch,
        "leads": leads,
        "scores": scores,
    }


def reached_every_read_model(seen: dict[str, Any]) -> bool:
    return (
        seen["pg"] is not None
        and seen["redis"] == seen["pg"]
        and seen["clickhouse_position"] is not None
        and seen["clickhouse_position"] >= seen["position"]
    )


def expected_delta(case: Case, scene: int) -> Counter[str]:
    want: Counter[str] = Counter(applied=1 + scene)  # the scene, then the good event
    if case.answer == STORED:
        want["applied"] += 1
    elif case.answer == DUPLICATE:
        want["duplicate"] += 1
    elif case.answer != BROKER:
        want["dead_lettered"] += 1
        want[f"dlq:{case.answer}"] += 1
    want["received"] = sum(want[k] for k in ("applied", "duplicate", "dead_lettered"))
    return +want


def param(case: Case) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=case.pending)] if case.pending else []
    return pytest.param(case, id=case.name, marks=marks)


@pytest.mark.parametrize("case", [param(c) for c in CASES])
def test_hostile_input_then_a_good_event(suite: Suite, case: Case) -> None:
    s, kit = suite.settings, suite.kit
    assert suite.worker.poll() is None, "the worker stopped before this case"
    partition = suite.sent % PARTITIONS
    suite.sent += 1
    values = case.build(kit)
    scene, hostile = values[:-1], values[-1]
    before = counts(s.metrics_port)

    assert produce(s, scene, partition, limit=BROKER_LIMIT) == [""] * len(scene)
    errors = produce(s, [hostile], partition, limit=2 * BROKER_LIMIT)
    if case.answer == BROKER:
        assert errors == ["MSG_SIZE_TOO_LARGE"]
    else:
        assert errors == [""], "the broker refused a message the engine should answer"

    good = f"good-after-{case.name}"
    sent_at = time.monotonic()
    assert produce(s, [kit.value(good)], partition, limit=BROKER_LIMIT) == [""]
    seen = asyncio.run(read_models(s, ORG, good))
    while not reached_every_read_model(seen) and time.monotonic() - sent_at < DEADLINE_S:
        assert suite.worker.poll() is None, f"the worker exited ({suite.log})"
        time.sleep(0.2)
        seen = asyncio.run(read_models(s, ORG, good))
    took = time.monotonic() - sent_at
    assert reached_every_read_model(seen), (
        f"the good event after {case.name} did not reach every read model in {DEADLINE_S}s: "
        f"pg={seen['pg']} redis={seen['redis']} position={seen['position']} "
        f"clickhouse={seen['clickhouse_position']}"
    )
    suite.good_leads.append(good)

    want = expected_delta(case, len(scene))
    deadline = time.monotonic() + DEADLINE_S
    while True:
        delta = +(counts(s.metrics_port) - before)
        if delta["received"] >= want["received"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert delta == want, f"{case.name}: counted {dict(delta)}, want {dict(want)}"
    if case.answer not in (STORED, DUPLICATE, BROKER):
        suite.dead_letters[case.answer] += 1
    if case.check is not None:
        case.check(seen)
    assert suite.worker.poll() is None, "the worker stopped"
    assert took <= DEADLINE_S


def test_no_read_model_set_anything_aside_and_clickhouse_holds_every_good_event(
    suite: Suite,
) -> None:
    s = suite.settings
    assert suite.worker.poll() is None
    assert len(suite.good_leads) >= 30

    async def quarantined() -> list[quarantine.Quarantined]:
        pool = await asyncpg.create_pool(s.pg_dsn, min_size=1, max_size=2)
        try:
            return await quarantine.entries(pool)
        finally:
            await pool.close()

    # Validation matches every sink: nothing it accepted was refused by a read model.
    assert asyncio.run(quarantined()) == []
    # Every dead letter is on the DLQ with the reason the case expects.
    letters = Counter(x.reason for x in read_letters(s.kafka, s.topic_dlq))
    assert letters == suite.dead_letters

    # The worker holds the chDB directory: stop it, then read what it projected.
    stop_worker(suite.worker)
    assert suite.worker.returncode is not None
    ch = connect(s.clickhouse_dsn)
    try:
        rows = ch.query(
            "SELECT DISTINCT lead_id FROM score_history WHERE org_id = {o:String}",
            parameters={"o": ORG},
        ).result_rows
    finally:
        ch.close()
    assert set(suite.good_leads) <= {r[0] for r in rows}
