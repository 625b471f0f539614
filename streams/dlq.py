"""Dead letters: lead-events the engine refuses, kept byte for byte on ``lead-events.dlq``.

A dead letter is the original message (key, value, headers) plus ``dlq.*`` headers
saying why and where it came from. The worker writes every dead letter to partition 0,
so the DLQ reads as one ordered log and an offset names a letter. A letter that is
replayed and fails again keeps its first failure's source and time.

Replays are remembered in PostgreSQL (``dlq_replays``), one row per letter: replays can
pick single letters, which a consumer-group offset (one position per partition) could
not record without marking the letters before them as replayed too.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

PREFIX = "dlq."
REASON = "dlq.reason"
DETAIL = "dlq.detail"
ERROR_CLASS = "dlq.error_class"
SOURCE_TOPIC = "dlq.source_topic"
SOURCE_PARTITION = "dlq.source_partition"
SOURCE_OFFSET = "dlq.source_offset"
FIRST_FAILURE_AT = "dlq.first_failure_at"
REPLAYED_AT = "dlq.replayed_at"
DLQ_PARTITION = 0
MAX_DETAIL = 1_000

Headers = tuple[tuple[str, bytes], ...]


class Reason(StrEnum):
    """Why a message was refused: the ``reason`` label of the dead-letter counter."""

    UNDECODABLE = "undecodable"  # not Avro in the Confluent wire format
    UNKNOWN_SCHEMA = "unknown_schema"  # names a schema id nobody registered
    INVALID = "invalid"  # decoded, but fails validation
    UNKNOWN_ORG = "unknown_org"  # valid, for an org that is not registered
    FAILED = "failed"  # applying it raised (a poison event)


class DeadLetterError(RuntimeError):
    """Kafka did not acknowledge every dead letter (or replayed letter) of a batch."""


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class RawMessage:
    """A Kafka message as consumed: what a dead letter must keep."""

    value: bytes | None
    key: bytes | None = None
    headers: Headers = ()
    topic: str = ""
    partition: int = -1
    offset: int = -1
    timestamp_ms: int | None = None

    def header(self, name: str) -> bytes | None:
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found


def normalize_headers(headers: Any) -> Headers:
    """Kafka clients give headers as a list of pairs or a mapping, values maybe None."""
    if not headers:
        return ()
    items: Iterable[tuple[Any, Any]] = headers.items() if isinstance(headers, Mapping) else headers
    out = []
    for key, value in items:
        name = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        if value is None:
            data = b""
        elif isinstance(value, bytes):
            data = value
        else:
            data = str(value).encode()
        out.append((name, data))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    message: RawMessage
    reason: Reason
    detail: str
    error_class: str

    def headers(self, now: datetime) -> list[tuple[str, bytes]]:
        """The original headers, then the dlq.* ones; a replayed letter keeps its provenance."""
        m = self.message
        carried = [(k, v) for k, v in m.headers if not k.startswith(PREFIX)]
        first = m.header(FIRST_FAILURE_AT)
        if m.header(SOURCE_TOPIC) is not None:
            source = [
                (SOURCE_TOPIC, m.header(SOURCE_TOPIC) or b""),
                (SOURCE_PARTITION, m.header(SOURCE_PARTITION) or b""),
                (SOURCE_OFFSET, m.header(SOURCE_OFFSET) or b""),
            ]
        else:
            source = [
                (SOURCE_TOPIC, m.topic.encode()),
                (SOURCE_PARTITION, str(m.partition).encode()),
                (SOURCE_OFFSET, str(m.offset).encode()),
            ]
        replayed = m.header(REPLAYED_AT)
        return [
            *carried,
            (REASON, str(self.reason).encode()),
            (DETAIL, self.detail[:MAX_DETAIL].encode("utf-8", "replace")),
            (ERROR_CLASS, self.error_class.encode()),
            *source,
            (FIRST_FAILURE_AT, first or now.isoformat().encode()),
            *([(REPLAYED_AT, replayed)] if replayed is not None else []),
        ]


def _deliver(producer: Producer, what: str, timeout: float, errors: list[str]) -> None:
    remaining = producer.flush(timeout)
    if errors or remaining:
        raise DeadLetterError(
            f"{what}: {len(errors)} failed, {remaining} unacknowledged: {errors[:3]}"
        )


class DeadLetterSink:
    """Produces dead letters and returns only once Kafka acknowledged every one."""

    def __init__(
        self,
        producer: Producer,
        topic: str,
        *,
        now: Any = utc_now,
        timeout: float = 30.0,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.now = now
        self.timeout = timeout

    def publish(self, letters: Sequence[DeadLetter]) -> None:
        errors: list[str] = []

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(str(err))

        now = self.now()
        for letter in letters:
            self.producer.produce(
                self.topic,
                key=letter.message.key,
                value=letter.message.value,
                headers=letter.headers(now),
                partition=DLQ_PARTITION,
                on_delivery=on_delivery,
            )
            self.producer.poll(0)
        _deliver(self.producer, "dead letters", self.timeout, errors)

    def close(self) -> None:
        self.producer.flush(10)


@dataclass(frozen=True, slots=True)
class StoredLetter:
    """A dead letter as read back from the DLQ topic."""

    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    headers: Headers

    def header(self, name: str) -> str:
        value = RawMessage(None, headers=self.headers).header(name)
        return "" if value is None else value.decode("utf-8", "replace")

    @property
    def ref(self) -> str:
        """How the CLI names it: the offset, prefixed by the partition when not 0."""
        return (
            str(self.offset)
            if self.partition == DLQ_PARTITION
            else ref(self.partition, self.offset)
        )

    @property
    def reason(self) -> str:
        return self.header(REASON)

    @property
    def source(self) -> str:
        return (
            f"{self.header(SOURCE_TOPIC)}/{self.header(SOURCE_PARTITION)}"
            f"@{self.header(SOURCE_OFFSET)}"
        )

    def replay_headers(self, now: datetime) -> list[tuple[str, bytes]]:
        kept = [(k, v) for k, v in self.headers if k != REPLAYED_AT]
        return [*kept, (REPLAYED_AT, now.isoformat().encode())]


def ref(partition: int, offset: int) -> str:
    return f"{partition}:{offset}"


def parse_ref(text: str) -> tuple[int, int]:
    """``17`` is offset 17 of partition 0; ``2:17`` names another partition."""
    partition, _, offset = text.rpartition(":")
    try:
        return (int(partition) if partition else DLQ_PARTITION), int(offset)
    except ValueError:
        raise ValueError(f"not a DLQ offset: {text!r} (OFFSET or PARTITION:OFFSET)") from None


def read_letters(bootstrap: str, topic: str, *, timeout: float = 15.0) -> list[StoredLetter]:
    """Every letter on the DLQ topic, up to the high watermarks seen at the start."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{topic}.reader",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            raise DeadLetterError(f"no topic {topic!r}")
        ends: dict[int, int] = {}
        for p in meta.partitions:
            lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if hi > lo:
                ends[p] = hi
        if not ends:
            return []
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        out: list[StoredLetter] = []
        pending = set(ends)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=0.5):
                if msg.error():
                    continue
                p, off = msg.partition(), msg.offset()
                if p not in pending or off >= ends[p]:
                    continue
                _kind, ts = msg.timestamp()
                out.append(
                    StoredLetter(
                        p,
                        off,
                        ts if ts > 0 else None,
                        msg.key(),
                        msg.value(),
                        normalize_headers(msg.headers()),
                    )
                )
                if off >= ends[p] - 1:
                    pending.discard(p)
        if pending:
            raise DeadLetterError(f"timed out reading {topic!r} (partitions {sorted(pending)})")
        out.sort(key=lambda letter: (letter.partition, letter.offset))
        return out
    except KafkaException as exc:
        raise DeadLetterError(f"reading {topic!r}: {exc}") from exc
    finally:
        consumer.close()


class ReplayLog:
    """Which letters of a DLQ topic were replayed, and when (PostgreSQL)."""

    DDL = """
    CREATE TABLE IF NOT EXISTS dlq_replays (
        dlq_topic text NOT NULL,
        dlq_partition int NOT NULL,
        dlq_offset bigint NOT NULL,
        replayed_at timestamptz NOT NULL,
        PRIMARY KEY (dlq_topic, dlq_partition, dlq_offset)
    )
    """

    def __init__(self, dsn: str, topic: str) -> None:
        self.dsn = dsn
        self.topic = topic

    def replayed(self) -> dict[tuple[int, int], datetime]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(self.DDL)
            rows = conn.execute(
                "SELECT dlq_partition, dlq_offset, replayed_at FROM dlq_replays "
                "WHERE dlq_topic = %s",
                (self.topic,),
            ).fetchall()
        return {(int(p), int(o)): at for p, o, at in rows}

    def record(self, letters: Sequence[StoredLetter], at: datetime) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(self.DDL)
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO dlq_replays (dlq_topic, dlq_partition, dlq_offset, replayed_at) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT (dlq_topic, dlq_partition, dlq_offset) "
                    "DO UPDATE SET replayed_at = EXCLUDED.replayed_at",
                    [(self.topic, x.partition, x.offset, at) for x in letters],
                )


def replay(
    letters: Sequence[StoredLetter],
    producer: Producer,
    topic: str,
    log: ReplayLog,
    *,
    now: datetime | None = None,
    timeout: float = 30.0,
) -> int:
    """Re-produce the letters' original key and value to ``topic``, then record them.

    Recording follows Kafka's acknowledgement: a crash in between replays them again
    on the next run, which the engine absorbs (event_id makes a redelivery a duplicate).
    """
    if not letters:
        return 0
    at = now or utc_now()
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    for letter in letters:
        producer.produce(
            topic,
            key=letter.key,
            value=letter.value,
            headers=letter.replay_headers(at),
            on_delivery=on_delivery,
        )
        producer.poll(0)
    _deliver(producer, "replayed letters", timeout, errors)
    log.record(letters, at)
    return len(letters)
