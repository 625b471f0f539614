"""The dead-letter log (adapters/dead_letter_log.py) as the sink writes it: one row per
letter with its org when known, no payload, idempotent under retries, bounded, and read
per org only."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import psycopg
import pytest

from adapters import dead_letter_log
from adapters.dead_letter_log import DeadLetterLog, Entry
from adapters.settings import Settings
from streams.dlq import DeadLetter, DeadLetterSink, PayloadStore, RawMessage, Reason
from streams.relay import kafka_producer

pytestmark = pytest.mark.integration

SECRET = b"jane.doe@example.com"  # stands for the personal data a payload carries


def letter(offset: int, org: str | None, reason: Reason = Reason.INVALID) -> DeadLetter:
    message = RawMessage(
        value=b'{"email": "' + SECRET + b'"}',
        key=b"lead-" + str(offset).encode(),
        headers=(("trace", b"t"),),
        topic="lead-events",
        partition=0,
        offset=offset,
    )
    return DeadLetter(message, reason, f"bad email {SECRET.decode()}", "ValidationError", org)


def rows(settings: Settings) -> list[tuple[object, ...]]:
    with psycopg.connect(settings.pg_dsn) as conn:
        return conn.execute(f"SELECT * FROM {dead_letter_log.TABLE} ORDER BY id").fetchall()


def counts(settings: Settings, org: str, bucket: str = "day") -> dict[str, object]:
    async def go() -> dict[str, object]:
        pool = await asyncpg.create_pool(settings.pg_dsn, min_size=1, max_size=1)
        try:
            now = datetime.now(UTC)
            return await dead_letter_log.counts(
                pool, org, now - timedelta(days=1), now + timedelta(minutes=1), bucket
            )
        finally:
            await pool.close()

    return asyncio.run(go())


def test_the_sink_logs_each_letter_once_with_its_org_and_no_payload(settings: Settings) -> None:
    sink = DeadLetterSink(
        kafka_producer(settings.kafka), settings.topic_dlq, payloads=PayloadStore(settings.pg_dsn)
    )
    letters = [
        letter(1, "org-a"),
        letter(2, "org-a", Reason.FAILED),
        letter(3, "org-b"),
        letter(4, None, Reason.UNDECODABLE),
    ]
    try:
        sink.publish(letters)
        sink.publish(letters)  # a retried batch (Kafka was away): logged once
    finally:
        sink.close()

    logged = rows(settings)
    assert [(r[1], r[2], r[7]) for r in logged] == [
        ("org-a", "invalid", 1),
        ("org-a", "failed", 2),
        ("org-b", "invalid", 3),
        (None, "undecodable", 4),
    ]
    text = repr(logged)
    assert SECRET.decode() not in text and "bad email" not in text and "lead-1" not in text

    a = counts(settings, "org-a")
    assert a["total"] == 2
    assert a["reasons"] == [{"reason": "failed", "count": 1}, {"reason": "invalid", "count": 1}]
    assert sum(i["count"] for i in a["items"]) == 2
    assert counts(settings, "org-b", "hour")["total"] == 1
    # A letter with no org is shown to no org, however it is asked for.
    assert counts(settings, "org-c")["total"] == 0
    assert counts(settings, "' OR org_id IS NULL --")["total"] == 0


def test_the_log_is_pruned_by_age_and_by_size(settings: Settings) -> None:
    log = DeadLetterLog(settings.pg_dsn, retention=timedelta(days=1), max_rows=3, prune_every_s=0)
    now = datetime.now(UTC)
    old = [Entry("org-a", "invalid", "E", now - timedelta(days=2), "t", 0, i) for i in range(4)]
    new = [Entry("org-a", "invalid", "E", now, "t", 0, 10 + i) for i in range(5)]
    try:
        log.record(old)
        log.record(new)
    finally:
        log.close()
    assert sorted(r[7] for r in rows(settings)) == [12, 13, 14]


def test_no_table_yet_counts_nothing(settings: Settings) -> None:
    got = counts(settings, "org-a")
    assert (got["total"], got["reasons"], got["items"]) == (0, [], [])
