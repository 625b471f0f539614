"""Reads of the event store for time travel, as the API's read-only role.

The read models hold each lead's present; its past is in the event store. These reads
open the store through the library (its mapper decodes, its repository rebuilds a lead
at a version from the latest snapshot at or before it) with table creation off: the
API's role only SELECTs, which ``db_role.grant`` gives it on every table of the schema,
the store's included.
"""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import psycopg.errors
from eventsourcing.persistence import ProgrammingError

from adapters.eventstore import LeadStore, postgres_env
from domain.lead import Lead, lead_aggregate_id

# The store's tables do not exist until a worker first runs: no lead has a past yet.
_NO_STORE = (psycopg.errors.UndefinedTable, ProgrammingError)


class StoreReads:
    """One lead's stored events and its state at a version; every read by org."""

    def __init__(self, dsn: str, pool_size: int = 2) -> None:
        env = postgres_env(dsn, cache_size=0, pool_size=pool_size)
        env["CREATE_TABLE"] = "n"  # the owner makes the tables; this role may not
        self.store = LeadStore(env=env)

    def close(self) -> None:
        self.store.close()

    def _events(self, org: str, lead: str) -> list[Any] | None:
        agg_id: UUID = lead_aggregate_id(org, lead)
        try:
            stored = self.store.recorder.select_events(agg_id)
        except _NO_STORE as exc:
            if isinstance(exc, ProgrammingError) and "does not exist" not in str(exc):
                raise
            return None
        if not stored:
            return None
        events = [self.store.mapper.to_domain_event(s) for s in stored]
        first = events[0]
        # The id is the org's own hash of its lead id; checked all the same.
        if getattr(first, "org_id", None) != org:
            return None
        return events

    def _lead_at(self, org: str, lead: str, version: int) -> Lead:
        found = self.store.repository.get(lead_aggregate_id(org, lead), version=version)
        assert isinstance(found, Lead)
        return found

    async def events(self, org: str, lead: str) -> list[Any] | None:
        """The lead's events in version order; None: ``org`` has no such lead."""
        return await asyncio.to_thread(self._events, org, lead)

    async def lead_at(self, org: str, lead: str, version: int) -> Lead:
        return await asyncio.to_thread(self._lead_at, org, lead, version)
