"""The decay timer: leads with no new events are rescored as time passes.

Engagement decays with the age of each activity (domain/lead.py), so a quiet lead's
score falls although nothing happens to it. Every ``decay_interval_s`` the worker
rescores up to ``decay_batch`` leads whose score is older than ``decay_after_s`` and who
have engagement left to lose, as of now; only changed scores become LeadScored events
(caused by ``decay:<time>``) and so score-events and read-model updates.

Candidates come from the PostgreSQL read model (``lead_scores``), walked in aggregate-id
order from where the last tick stopped, so leads whose score does not move do not starve
the others; the aggregates themselves are loaded from the event store.

One worker of a consumer group runs it: ``SessionLock`` (adapters/positions.py) elects
it with a PostgreSQL session advisory lock named after the group, held while its
connection lives; when that worker goes, its connection and so its lock go with it,
and another worker's next tick takes over. ``run_decay`` is the loop a worker
supervises (streams/supervise.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from uuid import UUID

import psycopg
import structlog

from adapters.positions import SessionLock
from streams.processor import TRANSIENT_ERRORS, BatchProcessor, utc_now

log = structlog.get_logger(__name__)

_STALE = """
SELECT aggregate_id FROM lead_scores
WHERE updated_at < %s AND engagement > 0 AND aggregate_id > %s
ORDER BY aggregate_id LIMIT %s
"""
_START = UUID(int=0)


class DecayTimer:
    def __init__(
        self,
        processor: BatchProcessor,
        dsn: str,
        *,
        after: timedelta,
        batch: int,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.processor = processor
        self.dsn = dsn
        self.after = after
        self.batch = batch
        self.clock = clock
        self._cursor = _START

    def tick(self) -> int:
        """Rescore the next stale leads; returns how many scores changed."""
        now = self.clock()
        ids = self._next_stale(now - self.after)
        if not ids:
            return 0
        changed = self.processor.rescore(ids, lambda _lead: now, f"decay:{now.isoformat()}")
        log.info("decay tick", rescored=len(ids), changed=changed)
        return changed

    def _next_stale(self, older_than: datetime) -> list[UUID]:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                rows = conn.execute(_STALE, (older_than, self._cursor, self.batch)).fetchall()
        except psycopg.errors.UndefinedTable:
            return []  # no read model yet: nothing has been scored
        ids = [r[0] for r in rows]
        # A short page means the end of the table: start from the top next time.
        self._cursor = ids[-1] if len(ids) == self.batch else _START
        return ids


def decay_lock_name(consumer_group: str) -> str:
    return f"leadscore.decay:{consumer_group}"


def run_decay(
    timer: DecayTimer,
    lock: SessionLock,
    interval: float,
    run: Callable[[Callable[[], int]], int],
    stop: threading.Event,
) -> None:
    """Every ``interval`` seconds, if this worker holds ``lock``, ``run(timer.tick)`` (on
    the worker's event-store thread); a database away skips a tick, anything else raises."""
    try:
        while not stop.wait(interval):
            try:
                if lock.held():
                    run(timer.tick)
            except TRANSIENT_ERRORS as exc:
                log.warning("decay tick skipped; next interval retries", error=repr(exc))
    finally:
        lock.close()
