"""The dead-letter topic on the real broker: bad messages kept byte for byte, then replayed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import asyncpg
import psycopg
import pytest
from confluent_kafka import Consumer
from prometheus_client import REGISTRY
from typer.testing import CliRunner

from adapters import tenancy
from adapters.settings import Settings
from adapters.tenancy import KnownOrgs
from domain.events import ActivityKind
from leadscore import cli_dlq
from streams.bootstrap import Engine, bootstrap
from streams.codec import event_to_record
from streams.dlq import (
    DETAIL,
    ERROR_CLASS,
    FIRST_FAILURE_AT,
    PAYLOAD_TABLE,
    REASON,
    REPLAYED_AT,
    SOURCE_OFFSET,
    SOURCE_PARTITION,
    SOURCE_TOPIC,
    DeadLetter,
    DeadLetterSink,
    PayloadStore,
    RawMessage,
    Reason,
    StoredLetter,
    normalize_headers,
    payload_ref,
    read_letters,
)
from streams.processor import BatchProcessor, BatchStats
from streams.relay import kafka_producer
from streams.wire import LEAD_EVENT_SCHEMA, AvroTopic
from tests.support.factories import FixedScorer, activity, created

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    e = bootstrap(settings, scorer=FixedScorer())
    # refresh_seconds=0: every miss re-reads the orgs, so a registration shows at once.
    e.processor.orgs = KnownOrgs(settings.pg_dsn, refresh_seconds=0)
    yield e
    e.close()


def register(settings: Settings, org_id: str) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(settings.pg_dsn)
        try:
            await tenancy.ensure_schema(conn)
            await tenancy.create_org(conn, org_id, org_id.upper())
        finally:
            await conn.close()

    asyncio.run(go())


class Source:
    """Reads lead-events as the worker does: raw messages with their metadata."""

    def __init__(self, settings: Settings) -> None:
        self.consumer = Consumer(
            {
                **settings.kafka,
                "group.id": f"{settings.consumer_group}-dlq-test",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        self.consumer.subscribe([settings.topic_lead_events])

    def take(self, n: int, timeout: float = 30) -> list[RawMessage]:
        out: list[RawMessage] = []
        deadline = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            for m in self.consumer.consume(n - len(out), timeout=0.5):
                if m.error():
                    continue
                out.append(
                    RawMessage(
                        m.value(),
                        key=m.key(),
                        headers=normalize_headers(m.headers()),
                        topic=m.topic(),
                        partition=m.partition(),
                        offset=m.offset(),
                        timestamp_ms=m.timestamp()[1],
                    )
                )
        assert len(out) == n, f"took {len(out)} of {n} messages"
        return out

    def close(self) -> None:
        self.consumer.close()


def produce(settings: Settings, messages: list[tuple[bytes | None, bytes | None]]) -> None:
    producer = kafka_producer(settings.kafka)
    for key, value in messages:
        producer.produce(
            settings.topic_lead_events,
            key=key,
            value=value,
            headers=[("trace", b"t-" + (key or b""))],
        )
    assert producer.flush(30) == 0


def run_batch(
    processor: BatchProcessor, sink: DeadLetterSink, batch: list[RawMessage]
) -> BatchStats:
    """What the worker does per batch: process, then deliver the dead letters."""
    stats = processor.process(batch)
    if stats.dead_letters:
        sink.publish(stats.dead_letters)
    return stats


def metric(outcome: str) -> float:
    return REGISTRY.get_sample_value("leadscore_lead_events_total", {"outcome": outcome}) or 0.0


def test_bad_messages_go_to_the_dlq_with_their_bytes_and_come_back_by_replay(
    engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(settings, "org-1")
    enc = AvroTopic(engine.catalog, settings.topic_lead_events, LEAD_EVENT_SCHEMA)
    good = [created(lead="a"), created(lead="b"), activity(lead="a")]
    future = created(lead="c", at=datetime.now(UTC) + timedelta(days=3))
    stranger = created(lead="d", org="org-2")
    bad = {
        b"garbage": b"not avro at all",
        b"empty": None,
        b"unknown-schema": b"\x00\x7f\xff\xff\xf0" + enc.encode(event_to_record(good[0]))[5:],
        b"c": enc.encode(event_to_record(future)),
        b"d": enc.encode(event_to_record(stranger)),
    }
    messages = [(ev.lead_id.encode(), enc.encode(event_to_record(ev))) for ev in good]
    produce(settings, [*messages, *bad.items()])

    before = {o: metric(o) for o in ("received", "applied", "duplicate", "dead_lettered")}
    source = Source(settings)
    sink = DeadLetterSink(
        kafka_producer(settings.kafka),
        settings.topic_dlq,
        payloads=PayloadStore(settings.pg_dsn),
    )
    try:
        batch = source.take(len(messages) + len(bad))
        stats = run_batch(engine.processor, sink, batch)
        assert (stats.received, stats.applied, stats.duplicates, stats.dead_lettered) == (
            8,
            3,
            0,
            5,
        )
        delta = {o: metric(o) - v for o, v in before.items()}
        assert delta["received"] == delta["applied"] + delta["duplicate"] + delta["dead_lettered"]
        assert delta["dead_lettered"] == 5

        # The DLQ holds the original key, value and headers, and says why and whence.
        letters = read_letters(settings.kafka, settings.topic_dlq)
        by_key = {x.key: x for x in letters}
        assert set(by_key) == set(bad)
        origin = {m.key: m for m in batch}
        for key, value in bad.items():
            x = by_key[key]
            assert x.value == value and x.partition == 0
            assert x.header("trace") == "t-" + key.decode()
            assert x.header(SOURCE_TOPIC) == settings.topic_lead_events
            assert int(x.header(SOURCE_PARTITION)) == origin[key].partition
            assert int(x.header(SOURCE_OFFSET)) == origin[key].offset
            assert x.header(FIRST_FAILURE_AT) and x.header(DETAIL) and x.header(ERROR_CLASS)
        reasons = {k: by_key[k].reason for k in bad}
        assert reasons == {
            b"garbage": "undecodable",
            b"empty": "undecodable",
            b"unknown-schema": "unknown_schema",
            b"c": "invalid",
            b"d": "unknown_org",
        }
        assert by_key[b"d"].header(ERROR_CLASS) == "UnknownOrgError"

        # The dead-letter log has each letter's org when known, never its payload or detail.
        with psycopg.connect(settings.pg_dsn) as conn:
            logged = {
                (r[0], r[1]): r[2:]
                for r in conn.execute(
                    "SELECT source_partition, source_offset, org_id, reason, error_class "
                    "FROM dead_letter_log"
                ).fetchall()
            }
        at = {k: (origin[k].partition, origin[k].offset) for k in bad}
        assert {k: logged[at[k]][:2] for k in bad} == {
            b"garbage": (None, "undecodable"),
            b"empty": (None, "undecodable"),
            b"unknown-schema": (None, "unknown_schema"),
            b"c": ("org-1", "invalid"),  # registered: its letter
            b"d": (None, "unknown_org"),  # no such org to show it to
        }

        # The CLI lists and shows them.
        monkeypatch.setattr(cli_dlq, "get_settings", lambda: settings)
        cli = CliRunner()
        listed = cli.invoke(cli_dlq.app, ["list"], terminal_width=250)
        assert listed.exit_code == 0, listed.output
        assert "unknown_org" in listed.output and "5 dead letters" in listed.output
        d = by_key[b"d"]
        shown = cli.invoke(cli_dlq.app, ["show", d.ref], terminal_width=250)
        assert shown.exit_code == 0, shown.output
        assert "org-2" in shown.output and "not registered" in shown.output

        # Fix the cause (register the org), replay that letter: it is applied.
        register(settings, "org-2")
        replayed = cli.invoke(cli_dlq.app, ["replay", "--offset", d.ref])
        assert replayed.exit_code == 0, replayed.output
        (again,) = source.take(1)
        assert (again.key, again.value) == (d.key, d.value)
        assert again.header(REPLAYED_AT) and again.header("trace") == b"t-d"
        stats = run_batch(engine.processor, sink, [again])
        assert (stats.applied, stats.dead_lettered) == (1, 0)

        # A second replay of the same letter is refused, unless forced (then a duplicate).
        refused = cli.invoke(cli_dlq.app, ["replay", "--offset", d.ref])
        assert refused.exit_code == 1 and "already replayed" in refused.output
        forced = cli.invoke(cli_dlq.app, ["replay", "--offset", d.ref, "--force"])
        assert forced.exit_code == 0, forced.output
        stats = run_batch(engine.processor, sink, source.take(1))
        assert (stats.applied, stats.duplicates) == (0, 1)

        # --all replays the four others (still bad): they come back as dead letters that
        # keep their first failure's time and source.
        replay_all = cli.invoke(cli_dlq.app, ["replay", "--all"])
        assert replay_all.exit_code == 0 and "replayed 4" in replay_all.output
        stats = run_batch(engine.processor, sink, source.take(4))
        assert stats.dead_lettered == 4
        after = read_letters(settings.kafka, settings.topic_dlq)
        assert len(after) == 9
        for x in after[5:]:
            first = by_key[x.key]
            assert x.value == first.value
            assert x.header(FIRST_FAILURE_AT) == first.header(FIRST_FAILURE_AT)
            assert x.source == first.source and x.header(REPLAYED_AT)
        # Only the four new letters are pending now; once replayed, nothing is.
        pending = cli.invoke(cli_dlq.app, ["replay", "--all"])
        assert "replayed 4" in pending.output and "5 already replayed" in pending.output
        nothing = cli.invoke(cli_dlq.app, ["replay", "--all"])
        assert nothing.exit_code == 0 and "nothing to replay" in nothing.output

        t = engine.processor.totals
        assert t.received == t.applied + t.duplicates + t.dead_lettered
        assert (t.received, t.applied, t.duplicates, t.dead_lettered) == (14, 4, 1, 9)
    finally:
        source.close()
        sink.close()


def test_stored_letter_helpers() -> None:
    x = StoredLetter(0, 3, None, b"k", b"v", ((REASON, b"invalid"), ("a", b"b")))
    assert x.ref == "3" and x.reason == "invalid"
    assert StoredLetter(2, 3, None, None, None, ()).ref == "2:3"


def test_org_registry_sees_a_new_org_after_its_refresh_interval(settings: Settings) -> None:
    now = [0.0]
    orgs = KnownOrgs(settings.pg_dsn, refresh_seconds=5, clock=lambda: now[0])
    assert not orgs.known("acme")  # no organizations table yet: nobody is registered
    register(settings, "acme")
    now[0] = 1.0
    assert not orgs.known("acme")  # a miss within the interval does not query again
    now[0] = 5.0
    assert orgs.known("acme")


class PoisonScorer(FixedScorer):
    """Refuses to score a lead with five demo requests: one poison event in a batch."""

    def predict(self, rows):  # type: ignore[no-untyped-def]
        demo = self.feature_names.index("n_demo_request")
        if any(row[demo] >= 5 for row in rows):
            raise RuntimeError("model refuses this row")
        return super().predict(rows)


def test_an_event_whose_processing_raises_is_dead_lettered_and_the_rest_stored(
    settings: Settings,
) -> None:
    engine = bootstrap(settings, scorer=PoisonScorer())
    sink = DeadLetterSink(
        kafka_producer(settings.kafka),
        settings.topic_dlq,
        payloads=PayloadStore(settings.pg_dsn),
    )
    try:
        enc = AvroTopic(engine.catalog, settings.topic_lead_events, LEAD_EVENT_SCHEMA)
        events = [created(lead="ok"), created(lead="p")]
        events += [activity(ActivityKind.DEMO_REQUEST, lead="p") for _ in range(5)]
        batch = [
            RawMessage(enc.encode(event_to_record(ev)), key=ev.lead_id.encode(), offset=i)
            for i, ev in enumerate(events)
        ]
        stats = run_batch(engine.processor, sink, batch)
        assert (stats.received, stats.applied, stats.failed, stats.dead_lettered) == (7, 6, 1, 1)
        (letter,) = stats.dead_letters
        assert letter.message is batch[-1] and letter.error_class == "RuntimeError"
        (stored,) = read_letters(settings.kafka, settings.topic_dlq)
        assert (stored.reason, stored.value, stored.header(SOURCE_OFFSET)) == (
            "failed",
            batch[-1].value,
            "6",
        )
    finally:
        sink.close()
        engine.close()


def test_payloads_kept_no_longer_than_the_dead_letter_topic_keeps_letters(
    settings: Settings,
) -> None:
    """A payload row older than the DLQ's retention goes at the next write; none goes
    when retention is off (0)."""

    def letter(offset: int) -> DeadLetter:
        message = RawMessage(b"x" * 10, b"lead-1", (), settings.topic_lead_events, 0, offset)
        return DeadLetter(message, Reason.INVALID, "too big", "ValidationError")

    def offsets() -> set[int]:
        with psycopg.connect(settings.pg_dsn) as conn:
            rows = conn.execute(f"SELECT source_offset FROM {PAYLOAD_TABLE}").fetchall()
        return {int(r[0]) for r in rows}

    def age(offset: int) -> None:
        with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
            conn.execute(
                f"UPDATE {PAYLOAD_TABLE} SET stored_at = now() - interval '2 minutes' "
                "WHERE source_offset = %s",
                (offset,),
            )

    keeping = PayloadStore(settings.pg_dsn)  # retention off
    keeping.put(letter(1))
    age(1)
    keeping.put(letter(2))
    assert offsets() == {1, 2}

    pruning = PayloadStore(settings.pg_dsn, retention_ms=60_000)
    pruning.put(letter(3))
    assert offsets() == {2, 3}  # 1 was older than a minute; 2 is not
    assert pruning.get(payload_ref(settings.topic_lead_events, 0, 1)) is None
