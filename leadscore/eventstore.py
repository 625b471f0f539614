"""The event store: the Lead aggregates in PostgreSQL through the eventsourcing library.

It is the single source of truth. Its notification log gives every stored domain
event one global position; score-events and read models follow that log.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import unquote, urlparse
from uuid import UUID

import psycopg
from eventsourcing import persistence as es_persistence
from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import IntegrityError, Notification

from domain.lead import Lead

# Positions of everything that follows the log (the score-event relay, projections).
TRACKING_DDL = (
    "CREATE TABLE IF NOT EXISTS tracking (name text PRIMARY KEY, position bigint NOT NULL)"
)
SCORED_TOPIC = f"{Lead.LeadScored.__module__}:{Lead.LeadScored.__qualname__}"


# The database is away (restarting, unreachable): retry, never treat as bad data.
# The library wraps psycopg's errors in its own types, so both families count.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    es_persistence.OperationalError,
    es_persistence.InterfaceError,
)


class ConcurrentWriteError(RuntimeError):
    """Another writer stored events for a lead in this batch first (e.g. during a rebalance)."""


def postgres_env(dsn: str, *, cache_size: int, pool_size: int = 4) -> dict[str, str]:
    """eventsourcing's POSTGRES_* settings from a libpq URL."""
    url = urlparse(dsn)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": url.path.lstrip("/") or "postgres",
        "POSTGRES_HOST": url.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(url.port or 5432),
        "POSTGRES_USER": unquote(url.username or "postgres"),
        "POSTGRES_PASSWORD": unquote(url.password or ""),
        "POSTGRES_POOL_SIZE": str(pool_size),
        **cache_env(cache_size),
    }


def cache_env(cache_size: int) -> dict[str, str]:
    """A bounded aggregate cache, or none when ``cache_size`` is 0 (readers that poll)."""
    if cache_size <= 0:
        return {}
    # The worker owning a partition is the only writer of its leads, so the
    # cache is authoritative; a stale entry surfaces as a version conflict.
    return {
        "AGGREGATE_CACHE_MAXSIZE": str(cache_size),
        "AGGREGATE_CACHE_FASTFORWARD": "n",
        "DEEPCOPY_FROM_AGGREGATE_CACHE": "n",
    }


class LeadStore(Application[UUID]):
    """Leads as event-sourced aggregates. Synchronous: call it off the event loop."""

    name = "Leads"

    def load(self, ids: Iterable[UUID]) -> dict[UUID, Lead | None]:
        found: dict[UUID, Lead | None] = {}
        for agg_id in ids:
            try:
                found[agg_id] = self.repository.get(agg_id)
            except AggregateNotFoundError:
                found[agg_id] = None
        return found

    def save_leads(self, leads: Sequence[Lead]) -> None:
        """Store all new events of ``leads`` in one transaction."""
        if not leads:
            return
        try:
            self.save(*leads)
        except IntegrityError as exc:
            self.evict([lead.id for lead in leads])
            raise ConcurrentWriteError(str(exc)) from exc

    def evict(self, ids: Iterable[UUID]) -> None:
        cache = self.repository.cache
        if cache is None:
            return
        for agg_id in ids:
            with contextlib.suppress(KeyError):
                cache.get(agg_id, evict=True)

    def notifications(
        self, after: int, limit: int, topics: Sequence[str] = ()
    ) -> Sequence[Notification]:
        return self.recorder.select_notifications(
            after, limit, topics=topics, inclusive_of_start=False
        )

    def all_notifications(
        self, topics: Sequence[str] = (), after: int = 0, batch: int = 5_000
    ) -> Iterator[Notification]:
        """Every notification after ``after`` (of ``topics``), read in batches, in log order."""
        while page := self.notifications(after, batch, topics=topics):
            yield from page
            after = page[-1].id

    def to_event(self, notification: Notification) -> Any:
        return self.mapper.to_domain_event(notification)

    def max_position(self) -> int:
        return self.recorder.max_notification_id() or 0


# Workers starting together would race on CREATE TABLE IF NOT EXISTS (PostgreSQL can
# fail one with a unique violation on its catalog); schema changes take this lock.
DDL_LOCK = "leadscore.ddl"


@contextlib.contextmanager
def ddl_lock(dsn: str) -> Iterator[None]:
    """Serialise schema creation across processes with a PostgreSQL advisory lock."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (DDL_LOCK,))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (DDL_LOCK,))


def open_store(dsn: str, *, cache_size: int = 100_000) -> LeadStore:
    with ddl_lock(dsn):  # the library creates its tables on construction
        return LeadStore(env=postgres_env(dsn, cache_size=cache_size))
