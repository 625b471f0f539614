"""One batch of raw lead-event messages through decode, the domain and the event store.

Synchronous on purpose: the eventsourcing library uses psycopg's blocking API,
so the Faust agent runs this in a single worker thread, off its event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from uuid import UUID

import psycopg
import structlog
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from adapters.eventstore import DATABASE_UNAVAILABLE, ConcurrentWriteError, LeadStore
from adapters.tenancy import KnownOrgs
from domain.events import LeadEvent
from domain.lead import Lead
from domain.processing import (
    BatchOutcome,
    apply_batch,
    event_time,
    lead_ids,
    rescore,
    undecided,
)
from domain.rules import NO_RULES, ScoringRules
from domain.scoring import Models, OneModel, Scorer
from streams import metrics
from streams.codec import MAX_ID_LENGTH as MAX_ORG_ID
from streams.codec import ValidationError, record_to_event
from streams.dlq import DeadLetter, RawMessage, Reason
from streams.errors import MassFailureError, TransientError, is_transient, transient
from streams.tracing import TraceContexts, TracedModels, Tracing, extract, traceparent_of
from streams.wire import SerializationError, UnknownSchemaError

log = structlog.get_logger(__name__)

MAX_CONFLICT_RETRIES = 5
# Errors that say "a service is away", not "this message is bad": the batch is retried,
# never dead-lettered. The processor raises them as TransientError (streams/errors.py).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    TransientError,
    *DATABASE_UNAVAILABLE,
    ConnectionError,
    TimeoutError,
)
# When events of a batch fail to apply one by one, at least this many failing and more
# than half the batch is the engine failing (MassFailureError), not poison events.
MASS_FAILURE_MIN = 3


class Decoder(Protocol):
    """The schema catalog (or registry client) as the processor uses it."""

    def decode(self, value: bytes | None) -> dict[str, Any]: ...


class UnknownOrgError(ValidationError):
    """A valid lead-event for an organization that is not registered."""


@dataclass
class BatchStats:
    """What became of a batch: received = applied + duplicates + dead_lettered.

    ``invalid`` (refused before applying: undecodable, unknown schema, invalid, unknown
    org) and ``failed`` (applying raised) are the two parts of ``dead_lettered``.
    ``dead_letters`` holds this batch's letters; totals do not accumulate them.
    """

    received: int = 0
    invalid: int = 0
    applied: int = 0
    duplicates: int = 0
    failed: int = 0
    scored: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list, repr=False, compare=False)

    @property
    def dead_lettered(self) -> int:
        return self.invalid + self.failed

    def add(self, other: BatchStats) -> None:
        for name in self.__dataclass_fields__:
            if name != "dead_letters":
                setattr(self, name, getattr(self, name) + getattr(other, name))


def utc_now() -> datetime:
    return datetime.now(UTC)


def as_message(value: RawMessage | bytes | None) -> RawMessage:
    return value if isinstance(value, RawMessage) else RawMessage(value)


def decode_message(
    message: RawMessage,
    catalog: Decoder,
    *,
    now: datetime,
    orgs: KnownOrgs | None = None,
) -> LeadEvent | DeadLetter:
    """Decode and validate one message: a LeadEvent, or a dead letter saying why.

    Only the registry's or the orgs' database's errors escape (the caller retries the
    batch; ``process`` raises them as TransientError); anything else a message provokes
    is that message's fault and makes it a dead letter.
    """
    record: Any = None
    try:
        record = catalog.decode(message.value)
        event = record_to_event(record, now=now)
        if orgs is not None and not orgs.known(event.org_id):
            raise UnknownOrgError(f"org {event.org_id!r} is not registered")
        return event
    except (*TRANSIENT_ERRORS, psycopg.Error):
        raise  # the registry or the orgs' database, not the message
    except UnknownSchemaError as exc:
        return DeadLetter(message, Reason.UNKNOWN_SCHEMA, str(exc), type(exc).__name__)
    except SerializationError as exc:
        return DeadLetter(message, Reason.UNDECODABLE, str(exc), type(exc).__name__)
    except UnknownOrgError as exc:
        # No org to show it to: the org it names is not registered.
        return DeadLetter(message, Reason.UNKNOWN_ORG, str(exc), type(exc).__name__)
    except ValidationError as exc:
        org = claimed_org(record, orgs)
        return DeadLetter(message, Reason.INVALID, str(exc), type(exc).__name__, org)
    except Exception as exc:  # a decoder or mapping bug provoked by this message
        if is_transient(exc):
            raise
        org = claimed_org(record, orgs)
        return DeadLetter(message, Reason.INVALID, f"{exc}", type(exc).__name__, org)


def claimed_org(record: Any, orgs: KnownOrgs | None) -> str | None:
    """The org a decoded record that failed validation names, if it is a registered one
    (or any, when the worker does not check orgs): the dead-letter log's org."""
    org = record.get("org_id") if isinstance(record, dict) else None
    if not isinstance(org, str) or not 0 < len(org) <= MAX_ORG_ID:
        return None
    return org if orgs is None or orgs.known(org) else None


class BatchProcessor:
    def __init__(
        self,
        store: LeadStore,
        catalog: Decoder,
        scorer: Scorer | Models,
        *,
        clock: Callable[[Lead], datetime] = event_time,
        now: Callable[[], datetime] = utc_now,
        orgs: KnownOrgs | None = None,
        rules_for: Callable[[str], ScoringRules] = lambda _org: NO_RULES,
        sinks: Sequence[Callable[[BatchOutcome, datetime], None]] = (),
        tracing: Tracing | None = None,
        contexts: TraceContexts | None = None,
    ) -> None:
        # One model for all, or the registry's model per org (adapters/model_registry.py).
        self.models: Models = scorer if isinstance(scorer, Models) else OneModel(scorer)
        self.store = store
        self.catalog = catalog
        self.clock = clock
        self.now = now
        self.orgs = orgs  # None: any org is accepted
        self.rules_for = rules_for
        # After a batch is stored: shadow scores, drift counts. Best effort, off the record.
        self.sinks = list(sinks)
        self.totals = BatchStats()
        # Off unless the worker turns it on (streams/tracing.py); ``contexts`` keeps each
        # lead-event's trace context for the relay, in another process.
        self.tracing = tracing or Tracing(None)
        self.contexts = contexts

    def process(self, values: Sequence[RawMessage | bytes | None]) -> BatchStats:
        """Apply a batch; every message ends applied, duplicate or in ``dead_letters``.

        Plain values are accepted for callers without Kafka metadata.
        Raises only TransientError (streams/errors.py), after which the whole batch must
        be retried: a service away, a model missing, or most of the batch failing at once.
        """
        started = time.perf_counter()
        stats = BatchStats(received=len(values))
        with self.tracing.span("leadscore.batch", attributes={"events": len(values)}) as batch:
            try:
                with self.tracing.span("decode"):
                    pairs = self._decode([as_message(v) for v in values], stats)
            except Exception as exc:
                if is_transient(exc):
                    raise transient(exc) from exc  # the registry or the orgs' database
                raise
            spans = self._event_spans(pairs, batch) if batch is not None else []
            events = [ev for _msg, ev in pairs]
            try:
                self._apply(events, stats)
            except Exception as exc:
                if is_transient(exc):
                    _end(spans, exc)
                    raise transient(exc) from exc  # not the events': retry the whole batch
                log.exception("batch failed, isolating the failing events", events=len(events))
                self._isolate(pairs, stats)
            _end(spans, None)
        self._count(stats)
        _observe_latency(pairs)
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        metrics.BATCH_SIZE.observe(len(values))
        return stats

    def _event_spans(
        self, pairs: Sequence[tuple[RawMessage, LeadEvent]], batch: Span
    ) -> list[Span]:
        """A span per lead-event in its own trace (its ``traceparent`` or a new root),
        linked to the batch's; their contexts kept for the relay before anything is stored."""
        link = [Link(batch.get_span_context())]
        spans: list[Span] = []
        contexts: dict[str, str] = {}
        for message, ev in pairs:
            span = self.tracing.start_span(
                "leadscore.lead_event",
                context=extract(message.headers) or Context(),
                kind=SpanKind.CONSUMER,
                links=link,
                attributes={
                    "leadscore.event_id": ev.event_id,
                    "leadscore.event_type": str(ev.event_type),
                    "messaging.kafka.partition": message.partition or 0,
                    "messaging.kafka.offset": message.offset or 0,
                },
            )
            spans.append(span)
            contexts[ev.event_id] = traceparent_of(span)
        if self.contexts is not None:
            try:
                self.contexts.put(contexts)
            except psycopg.Error as exc:  # a lost trace is no reason to hold the batch
                log.warning("trace contexts not kept", error=type(exc).__name__)
        return spans

    def _isolate(self, pairs: Sequence[tuple[RawMessage, LeadEvent]], stats: BatchStats) -> None:
        """Apply one event at a time; those that fail alone are dead letters, unless the
        failure is transient or hits most of the batch (then nothing is dead-lettered)."""
        failures: list[tuple[RawMessage, LeadEvent, Exception]] = []
        for message, ev in pairs:
            try:
                self._apply([ev], stats)
            except Exception as exc:
                if is_transient(exc):
                    raise transient(exc) from exc
                failures.append((message, ev, exc))
        if len(failures) >= MASS_FAILURE_MIN and 2 * len(failures) > len(pairs):
            first = failures[0][2]
            raise MassFailureError(
                f"{len(failures)} of {len(pairs)} events failed alone, the first with "
                f"{type(first).__name__}: {first}"
            ) from first
        for message, ev, exc in failures:
            stats.failed += 1
            stats.dead_letters.append(
                DeadLetter(message, Reason.FAILED, str(exc), type(exc).__name__, ev.org_id)
            )
            log.error(
                "lead-event failed",
                event_id=ev.event_id,
                error=f"{type(exc).__name__}: {exc}",
            )

    def _decode(
        self, messages: Sequence[RawMessage], stats: BatchStats
    ) -> list[tuple[RawMessage, LeadEvent]]:
        now = self.now()
        pairs = []
        for message in messages:
            result = decode_message(message, self.catalog, now=now, orgs=self.orgs)
            if isinstance(result, LeadEvent):
                pairs.append((message, result))
                continue
            stats.invalid += 1
            stats.dead_letters.append(result)
            log.warning(
                "invalid lead-event",
                reason=str(result.reason),
                detail=result.detail,
                error=result.error_class,
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                size=None if message.value is None else len(message.value),
            )
        return pairs

    def _apply(self, events: Sequence[LeadEvent], stats: BatchStats) -> None:
        """Apply, score and store in one transaction."""
        self.models.refresh()
        scored_at = self.now()
        models = TracedModels(self.models, self.tracing) if self.tracing.enabled else self.models
        outcome = self._transaction(
            lead_ids(events),
            lambda leads: apply_batch(
                events,
                leads,
                models,
                self.clock,
                scored_at,
                self.rules_for,
                models.shadow,
                # ids older than what a lead remembers: one query for the whole batch
                stored=self.store.stored_event_ids(undecided(events, leads)),
            ),
            scored_at,
        )
        stats.applied += outcome.applied
        stats.duplicates += outcome.duplicates
        stats.scored += outcome.scored

    def rescore(self, ids: Sequence[UUID], clock: Callable[[Lead], datetime], cause: str) -> int:
        """Rescore stored leads as of ``clock(lead)`` (decay, replay); returns scores recorded."""
        self.models.refresh()
        scored_at = self.now()
        outcome = self._transaction(
            set(ids),
            lambda leads: rescore(
                [lead for lead in leads.values() if lead is not None],
                self.models,
                clock,
                scored_at,
                cause,
                self.rules_for,
                self.models.shadow,
            ),
            scored_at,
        )
        metrics.SCORES_RECORDED.inc(outcome.scored)
        return outcome.scored

    def _transaction(
        self,
        ids: set[UUID],
        work: Callable[[dict[UUID, Lead | None]], BatchOutcome],
        scored_at: datetime,
    ) -> BatchOutcome:
        """Load the leads, let ``work`` change them, save what it touched in one
        transaction; a version conflict (another writer of a lead) reloads and retries."""
        for attempt in range(MAX_CONFLICT_RETRIES):
            with self.tracing.span("load", attributes={"leads": len(ids)}):
                leads = self.store.load(ids)
            try:
                with self.tracing.span("apply"):
                    outcome = work(leads)
                with self.tracing.span("store", attributes={"leads": len(outcome.touched)}):
                    self.store.save_leads(list(outcome.touched.values()))
            except ConcurrentWriteError:
                log.info("concurrent write, reloading leads", attempt=attempt, leads=len(ids))
                continue
            except BaseException:
                # The cache holds the aggregates we mutated: drop them, history is intact.
                self.store.evict(ids)
                raise
            self._sink(outcome, scored_at)
            return outcome
        raise ConcurrentWriteError(f"gave up after {MAX_CONFLICT_RETRIES} conflicting writes")

    def close(self) -> None:
        if self.contexts is not None:
            self.contexts.close()
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if close is not None:
                close()

    def _sink(self, outcome: BatchOutcome, scored_at: datetime) -> None:
        for sink in self.sinks:
            try:
                sink(outcome, scored_at)
            except Exception as exc:  # the batch is stored; a lost side record is no reason
                log.warning("sink failed", sink=repr(sink), error=repr(exc))

    def _count(self, stats: BatchStats) -> None:
        self.totals.add(stats)
        metrics.EVENTS.labels("received").inc(stats.received)
        metrics.EVENTS.labels("applied").inc(stats.applied)
        metrics.EVENTS.labels("duplicate").inc(stats.duplicates)
        metrics.EVENTS.labels("dead_lettered").inc(stats.dead_lettered)
        for letter in stats.dead_letters:
            metrics.DEAD_LETTERS.labels(str(letter.reason)).inc()
        metrics.SCORES_RECORDED.inc(stats.scored)


def _end(spans: Sequence[Span], error: BaseException | None) -> None:
    for span in spans:
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        span.end()


def _observe_latency(pairs: Sequence[tuple[RawMessage, LeadEvent]]) -> None:
    """From each lead-event's Kafka timestamp (produced or appended) to its batch stored."""
    now_ms = time.time() * 1000
    for message, _ev in pairs:
        if message.timestamp_ms:
            metrics.SCORE_LATENCY.observe(max(0.0, (now_ms - message.timestamp_ms) / 1000))
