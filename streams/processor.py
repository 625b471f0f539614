"""One batch of raw lead-event messages through decode, the domain and the event store.

Synchronous on purpose: the eventsourcing library uses psycopg's blocking API,
so the Faust agent runs this in a single worker thread, off its event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
import structlog

from domain.events import LeadEvent
from domain.lead import Lead
from domain.processing import apply_batch, event_time, lead_ids
from domain.scoring import Scorer, check_model
from leadscore.eventstore import ConcurrentWriteError, LeadStore
from streams import metrics
from streams.codec import ValidationError, record_to_event
from streams.wire import SchemaCatalog, SerializationError

log = structlog.get_logger(__name__)

MAX_CONFLICT_RETRIES = 5


@dataclass
class BatchStats:
    received: int = 0
    invalid: int = 0
    applied: int = 0
    duplicates: int = 0
    failed: int = 0
    scored: int = 0

    def add(self, other: BatchStats) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def utc_now() -> datetime:
    return datetime.now(UTC)


class BatchProcessor:
    def __init__(
        self,
        store: LeadStore,
        catalog: SchemaCatalog,
        scorer: Scorer,
        *,
        clock: Callable[[Lead], datetime] = event_time,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        check_model(scorer)
        self.store = store
        self.catalog = catalog
        self.scorer = scorer
        self.clock = clock
        self.now = now
        self.totals = BatchStats()

    def process(self, values: Sequence[bytes | None]) -> BatchStats:
        started = time.perf_counter()
        stats = BatchStats(received=len(values))
        events = self._decode(values, stats)
        try:
            self._apply(events, stats)
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise  # the database is away: the caller retries the whole batch
        except Exception:
            log.exception("batch failed, isolating the failing events", events=len(events))
            for ev in events:
                try:
                    self._apply([ev], stats)
                except (psycopg.OperationalError, psycopg.InterfaceError):
                    raise
                except Exception as exc:
                    stats.failed += 1
                    log.error(
                        "lead-event failed",
                        event_id=ev.event_id,
                        error=f"{type(exc).__name__}: {exc}",
                    )
        self._count(stats)
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        metrics.BATCH_SIZE.observe(len(values))
        return stats

    def _decode(self, values: Sequence[bytes | None], stats: BatchStats) -> list[LeadEvent]:
        events = []
        for value in values:
            try:
                events.append(record_to_event(self.catalog.decode(value)))
            except (SerializationError, ValidationError) as exc:
                stats.invalid += 1
                log.warning(
                    "invalid lead-event",
                    reason=str(exc),
                    error=type(exc).__name__,
                    size=None if value is None else len(value),
                )
        return events

    def _apply(self, events: Sequence[LeadEvent], stats: BatchStats) -> None:
        """Apply, score and store in one transaction; a version conflict reloads and retries."""
        ids = lead_ids(events)
        for attempt in range(MAX_CONFLICT_RETRIES):
            leads = self.store.load(ids)
            try:
                outcome = apply_batch(events, leads, self.scorer, self.clock, self.now())
                self.store.save_leads(list(outcome.touched.values()))
            except ConcurrentWriteError:
                log.info("concurrent write, reloading leads", attempt=attempt, leads=len(ids))
                continue
            except BaseException:
                # The cache holds the aggregates we mutated: drop them, history is intact.
                self.store.evict(ids)
                raise
            stats.applied += outcome.applied
            stats.duplicates += outcome.duplicates
            stats.scored += outcome.scored
            return
        raise ConcurrentWriteError(f"gave up after {MAX_CONFLICT_RETRIES} conflicting writes")

    def _count(self, stats: BatchStats) -> None:
        self.totals.add(stats)
        metrics.EVENTS.labels("received").inc(stats.received)
        metrics.EVENTS.labels("applied").inc(stats.applied)
        metrics.EVENTS.labels("duplicate").inc(stats.duplicates)
        metrics.EVENTS.labels("invalid").inc(stats.invalid)
        metrics.EVENTS.labels("failed").inc(stats.failed)
        metrics.SCORES_RECORDED.inc(stats.scored)
