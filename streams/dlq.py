"""Dead letters: lead-events the engine refuses, kept byte for byte on ``lead-events.dlq``.

A dead letter is the original message (key, value, headers) plus ``dlq.*`` headers
saying why and where it came from. The worker writes every dead letter to partition 0,
so the DLQ reads as one ordered log and an offset names a letter. A letter that is
replayed and fails again keeps its first failure's source and time.

A letter whose key, value and headers would not fit one Kafka message (over the
sink's ``max_inline_bytes``, below the producer's ``message.max.bytes``) goes out by
reference: its original key, value and headers are kept in PostgreSQL
(``dead_letter_payloads``, one row per source topic/partition/offset) and the letter on
the DLQ carries ``dlq.payload_ref``, ``dlq.payload_sha256`` and ``dlq.payload_bytes``
instead of the value. ``resolve`` puts the bytes back for ``dlq show`` and ``dlq replay``.
So a dead letter can always be produced: a message the broker accepted never stops the
worker because its letter, with the dlq.* headers added, is too large.

Replays are remembered in PostgreSQL (``dlq_replays``), one row per letter: replays can
pick single letters, which a consumer-group offset (one position per partition) could
not record without marking the letters before them as replayed too.

Every letter is also logged, without its payload, in the dead-letter log
(adapters/dead_letter_log.py: org, reason, time, source), in one statement per batch of
letters just before they are produced, so the API and the console count dead letters
by reason without reading Kafka. A letter's org is the one its record names (decoded,
and a registered one when the worker checks orgs), or the tenant's whose per-org topic
it came in on (streams/gate.py); else it has none and no org is shown it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson
import psycopg
import structlog
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from adapters.dead_letter_log import DeadLetterLog, Entry

log = structlog.get_logger(__name__)

PREFIX = "dlq."
REASON = "dlq.reason"
DETAIL = "dlq.detail"
ERROR_CLASS = "dlq.error_class"
SOURCE_TOPIC = "dlq.source_topic"
SOURCE_PARTITION = "dlq.source_partition"
SOURCE_OFFSET = "dlq.source_offset"
FIRST_FAILURE_AT = "dlq.first_failure_at"
REPLAYED_AT = "dlq.replayed_at"
PAYLOAD_REF = "dlq.payload_ref"
PAYLOAD_SHA256 = "dlq.payload_sha256"
PAYLOAD_BYTES = "dlq.payload_bytes"
DLQ_PARTITION = 0
MAX_DETAIL = 1_000
# Below librdkafka's default message.max.bytes (1,000,000), with room for the batch framing.
MAX_INLINE_BYTES = 900_000
# A key longer than this stays in PostgreSQL with the value of a letter sent by reference.
MAX_INLINE_KEY = 16_384
PAYLOAD_TABLE = "dead_letter_payloads"

Headers = tuple[tuple[str, bytes], ...]


class Reason(StrEnum):
    """Why a message was refused: the ``reason`` label of the dead-letter counter."""

    UNDECODABLE = "undecodable"  # not Avro in the Confluent wire format
    # names a schema id nobody registered, or one not under the topic's subject as its record
    UNKNOWN_SCHEMA = "unknown_schema"
    INVALID = "invalid"  # decoded, but fails validation
    UNKNOWN_ORG = "unknown_org"  # valid, for an org that is not registered
    # on a tenant's per-org topic (streams/gate.py), a lead-event of another org
    ORG_NOT_ALLOWED = "org_not_allowed"
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
    org_id: str | None = None  # whose letter it is, when known (see the module's doc)

    def entry(self, now: datetime) -> Entry:
        """The letter as the dead-letter log keeps it: no payload, no detail."""
        topic, partition, offset = self.source()
        return Entry(self.org_id, str(self.reason), self.error_class, now, topic, partition, offset)

    def carried_headers(self) -> list[tuple[str, bytes]]:
        """The original message's own headers (a replayed letter's dlq.* ones excluded)."""
        return [(k, v) for k, v in self.message.headers if not k.startswith(PREFIX)]

    def source(self) -> tuple[str, int, int]:
        """Where the message first came from: topic, partition, offset (kept by replays)."""
        m = self.message
        if m.header(SOURCE_TOPIC) is not None:
            try:
                return (
                    (m.header(SOURCE_TOPIC) or b"").decode("utf-8", "replace"),
                    int(m.header(SOURCE_PARTITION) or b"-1"),
                    int(m.header(SOURCE_OFFSET) or b"-1"),
                )
            except ValueError:
                pass  # a forged or damaged header: name where this copy came from
        return m.topic, m.partition, m.offset

    def size(self, now: datetime) -> int:
        """The bytes this letter takes in a Kafka message, framing aside."""
        m = self.message
        heads = sum(len(k) + len(v) for k, v in self.headers(now))
        return len(m.key or b"") + len(m.value or b"") + heads

    def headers(self, now: datetime, *, carried: bool = True) -> list[tuple[str, bytes]]:
        """The original headers, then the dlq.* ones; a replayed letter keeps its provenance."""
        m = self.message
        first = m.header(FIRST_FAILURE_AT)
        topic, partition, offset = self.source()
        source = [
            (SOURCE_TOPIC, topic.encode()),
            (SOURCE_PARTITION, str(partition).encode()),
            (SOURCE_OFFSET, str(offset).encode()),
        ]
        replayed = m.header(REPLAYED_AT)
        return [
            *(self.carried_headers() if carried else []),
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


class PayloadStore:
    """The original bytes of dead letters sent by reference (PostgreSQL, ``dead_letter_payloads``).

    One row per source message (topic, partition, offset), written before its letter is
    produced, so a letter never names a row that is not there; writing it twice is a no-op.
    A row is kept as long as the dead-letter topic keeps its letter (``retention_ms``, the
    topic's ``LEADSCORE_DLQ_RETENTION_MS``; 0 keeps rows until deleted): each write first
    deletes the rows older than that, so a person's bytes do not outlive the letter here.
    """

    DDL = f"""
    CREATE TABLE IF NOT EXISTS {PAYLOAD_TABLE} (
        source_topic text NOT NULL,
        source_partition int NOT NULL,
        source_offset bigint NOT NULL,
        sha256 text NOT NULL,
        key bytea,
        value bytea,
        headers jsonb NOT NULL,
        stored_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (source_topic, source_partition, source_offset)
    )
    """

    def __init__(self, dsn: str, retention_ms: int = 0) -> None:
        self.dsn = dsn
        self.retention_ms = retention_ms

    def put(self, letter: DeadLetter) -> tuple[str, str]:
        """Keep the letter's key, value and headers; returns its reference and sha256."""
        m = letter.message
        digest = sha256(m.value)
        topic, partition, offset = letter.source()
        heads = [[k, v.hex()] for k, v in letter.carried_headers()]
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(self.DDL)
            if self.retention_ms > 0:
                conn.execute(
                    f"DELETE FROM {PAYLOAD_TABLE} "
                    "WHERE stored_at < now() - make_interval(secs => %s)",
                    (self.retention_ms / 1000,),
                )
            conn.execute(
                f"INSERT INTO {PAYLOAD_TABLE} (source_topic, source_partition, source_offset, "
                "sha256, key, value, headers) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (source_topic, source_partition, source_offset) DO NOTHING",
                (topic, partition, offset, digest, m.key, m.value, orjson.dumps(heads).decode()),
            )
        return payload_ref(topic, partition, offset), digest

    def get(self, ref: str) -> tuple[bytes | None, bytes | None, Headers, str] | None:
        """The key, value, headers and sha256 kept under ``ref``; None if no row."""
        topic, partition, offset = parse_payload_ref(ref)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(self.DDL)
            row = conn.execute(
                f"SELECT key, value, headers, sha256 FROM {PAYLOAD_TABLE} "
                "WHERE source_topic = %s AND source_partition = %s AND source_offset = %s",
                (topic, partition, offset),
            ).fetchone()
        if row is None:
            return None
        key, value, heads, digest = row
        headers = tuple((str(k), bytes.fromhex(v)) for k, v in heads)
        return (
            None if key is None else bytes(key),
            None if value is None else bytes(value),
            headers,
            str(digest),
        )


def sha256(value: bytes | None) -> str:
    return hashlib.sha256(value or b"").hexdigest()


def payload_ref(topic: str, partition: int, offset: int) -> str:
    return f"postgresql:{PAYLOAD_TABLE}/{topic}/{partition}/{offset}"


def parse_payload_ref(ref: str) -> tuple[str, int, int]:
    prefix = f"postgresql:{PAYLOAD_TABLE}/"
    if not ref.startswith(prefix):
        raise DeadLetterError(f"not a dead-letter payload reference: {ref!r}")
    topic, partition, offset = ref.removeprefix(prefix).rsplit("/", 2)
    return topic, int(partition), int(offset)


class DeadLetterSink:
    """Produces dead letters and returns only once Kafka acknowledged every one.

    A letter over ``max_inline_bytes`` (or one the producer refuses as too large) is sent
    by reference, its bytes kept in ``payloads`` first. Every letter is logged in
    ``letters_log`` first (one statement for the batch; a retry logs nothing twice). Any
    failure (Kafka, PostgreSQL) is a DeadLetterError: the caller retries the whole batch
    of letters.
    """

    def __init__(
        self,
        producer: Producer,
        topic: str,
        *,
        payloads: PayloadStore,
        max_inline_bytes: int = MAX_INLINE_BYTES,
        now: Any = utc_now,
        timeout: float = 30.0,
        letters_log: DeadLetterLog | None = None,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.payloads = payloads
        self.letters_log = letters_log or DeadLetterLog(payloads.dsn)
        self.max_inline_bytes = max_inline_bytes
        self.now = now
        self.timeout = timeout

    def publish(self, letters: Sequence[DeadLetter]) -> None:
        errors: list[str] = []

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(str(err))

        now = self.now()
        try:
            self.letters_log.record([letter.entry(now) for letter in letters])
            for letter in letters:
                if letter.size(now) > self.max_inline_bytes:
                    self._produce_by_reference(letter, now, on_delivery)
                    continue
                try:
                    self._produce(
                        letter.message.key, letter.message.value, letter.headers(now), on_delivery
                    )
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.MSG_SIZE_TOO_LARGE:
                        raise
                    self._produce_by_reference(letter, now, on_delivery)
        except (KafkaException, BufferError) as exc:
            raise DeadLetterError(f"dead letters: {exc}") from exc
        except psycopg.Error as exc:
            raise DeadLetterError(f"dead-letter payloads: {exc}") from exc
        _deliver(self.producer, "dead letters", self.timeout, errors)

    def _produce(
        self,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        on_delivery: Any,
    ) -> None:
        self.producer.produce(
            self.topic,
            key=key,
            value=value,
            headers=headers,
            partition=DLQ_PARTITION,
            on_delivery=on_delivery,
        )
        self.producer.poll(0)

    def _produce_by_reference(self, letter: DeadLetter, now: datetime, on_delivery: Any) -> None:
        ref, digest = self.payloads.put(letter)
        m = letter.message
        size = len(m.value or b"")
        log.warning(
            "dead letter too large for Kafka, sent by reference",
            ref=ref,
            bytes=size,
            reason=str(letter.reason),
        )
        key = m.key if m.key is None or len(m.key) <= MAX_INLINE_KEY else None
        headers = [
            *letter.headers(now, carried=False),
            (PAYLOAD_REF, ref.encode()),
            (PAYLOAD_SHA256, digest.encode()),
            (PAYLOAD_BYTES, str(size).encode()),
        ]
        self._produce(key, None, headers, on_delivery)

    def close(self) -> None:
        self.producer.flush(10)
        self.letters_log.close()


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

    @property
    def by_reference(self) -> bool:
        return bool(self.header(PAYLOAD_REF))

    def replay_headers(self, now: datetime) -> list[tuple[str, bytes]]:
        by_ref = (REPLAYED_AT, PAYLOAD_REF, PAYLOAD_SHA256, PAYLOAD_BYTES)
        kept = [(k, v) for k, v in self.headers if k not in by_ref]
        return [*kept, (REPLAYED_AT, now.isoformat().encode())]


def resolve(letter: StoredLetter, payloads: PayloadStore) -> StoredLetter:
    """A letter sent by reference with its original key, value and headers put back
    (checked against its sha256); any other letter as it is."""
    if not letter.by_reference:
        return letter
    ref = letter.header(PAYLOAD_REF)
    found = payloads.get(ref)
    if found is None:
        raise DeadLetterError(f"dead letter {letter.ref}: no payload at {ref}")
    key, value, carried, digest = found
    if sha256(value) != letter.header(PAYLOAD_SHA256) or digest != letter.header(PAYLOAD_SHA256):
        raise DeadLetterError(f"dead letter {letter.ref}: payload at {ref} fails its sha256")
    return replace(letter, key=key, value=value, headers=(*carried, *letter.headers))


def ref(partition: int, offset: int) -> str:
    return f"{partition}:{offset}"


def parse_ref(text: str) -> tuple[int, int]:
    """``17`` is offset 17 of partition 0; ``2:17`` names another partition."""
    partition, _, offset = text.rpartition(":")
    try:
        return (int(partition) if partition else DLQ_PARTITION), int(offset)
    except ValueError:
        raise ValueError(f"not a DLQ offset: {text!r} (OFFSET or PARTITION:OFFSET)") from None


def read_letters(
    kafka: Mapping[str, str], topic: str, *, timeout: float = 15.0
) -> list[StoredLetter]:
    """Every letter on the DLQ topic, up to the high watermarks seen at the start."""
    consumer = Consumer(
        {
            **kafka,
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
