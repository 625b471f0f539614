"""Reading the event store's notification log: one global order, from any position."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    StoredEvent,
    UUIDAsHex,
)

from adapters import lead_keys
from adapters.eventstore import EVENTS_TABLE, OrjsonTranscoder, PiiMapper
from adapters.lead_keys import KeyEncryptionKeys, LeadKeys
from adapters.settings import get_settings


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One stored domain event at its position in the log."""

    position: int
    aggregate_id: UUID
    version: int
    # LeadCreated, LeadUpdated, ActivityRecorded, LeadConverted, LeadDisqualified, LeadScored
    kind: str
    event: Any  # the domain event; every kind carries org_id and lead_id


def log_mapper(keks: KeyEncryptionKeys | None = None) -> PiiMapper:
    """The same mapping the event store writes with (JSON, UUID/datetime/Decimal
    transcodings, personal data sealed per lead). Its keys hold only what ``load_keys``
    fetched: a lead without a key there reads without its personal data."""
    transcoder = OrjsonTranscoder()
    transcoder.register(UUIDAsHex())
    transcoder.register(DecimalAsStr())
    transcoder.register(DatetimeAsISO())
    mapper = PiiMapper(transcoder=transcoder)
    mapper.keys = LeadKeys(keks or KeyEncryptionKeys.from_settings(get_settings()), None)
    return mapper


class LogReader:
    """Async reader of the notification log (asyncpg), decoding rows to domain events."""

    RECENT_BATCHES = 8

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.mapper = log_mapper()
        # Projections that follow the log together ask for the same batches:
        # decode each once. A cached batch may be shorter than the log is now,
        # which is still correct: the next read continues from its end.
        self._recent: dict[tuple[int, int], list[LogEntry]] = {}

    async def read(self, after: int, limit: int) -> list[LogEntry]:
        cached = self._recent.get((after, limit))
        if cached:
            return cached
        entries = await self._fetch(after, limit)
        if entries:
            if len(self._recent) >= self.RECENT_BATCHES:
                self._recent.pop(next(iter(self._recent)))
            self._recent[(after, limit)] = entries
        return entries

    async def _fetch(self, after: int, limit: int) -> list[LogEntry]:
        rows = await self.pool.fetch(
            f"SELECT notification_id, originator_id, originator_version, topic, state "
            f"FROM {EVENTS_TABLE} WHERE notification_id > $1 ORDER BY notification_id LIMIT $2",
            after,
            limit,
        )
        return await self._entries(rows)

    async def at(self, positions: Sequence[int]) -> list[LogEntry]:
        """The entries at ``positions`` (those that exist), in log order."""
        rows = await self.pool.fetch(
            f"SELECT notification_id, originator_id, originator_version, topic, state "
            f"FROM {EVENTS_TABLE} WHERE notification_id = ANY($1::bigint[]) "
            f"ORDER BY notification_id",
            list(positions),
        )
        return await self._entries(rows)

    async def of_aggregate(self, aggregate_id: UUID, upto: int) -> list[LogEntry]:
        """One lead's entries up to ``upto``, in log order (to fold its row afresh)."""
        rows = await self.pool.fetch(
            f"SELECT notification_id, originator_id, originator_version, topic, state "
            f"FROM {EVENTS_TABLE} WHERE originator_id = $1 AND notification_id <= $2 "
            f"ORDER BY notification_id",
            aggregate_id,
            upto,
        )
        return await self._entries(rows)

    async def head(self) -> int:
        """The newest position in the log (0 when empty)."""
        value = await self.pool.fetchval(f"SELECT max(notification_id) FROM {EVENTS_TABLE}")
        return int(value or 0)

    async def _entries(self, rows: Sequence[Any]) -> list[LogEntry]:
        # The keys of the leads whose personal data these rows hold, read now: a lead
        # forgotten since the last batch is never decrypted again (its key is gone).
        sealed = list({r[1] for r in rows if b'"_pii"' in r[4]})
        self.mapper.keys.replace(await lead_keys.fetch_async(self.pool, sealed))
        return [self._entry(r) for r in rows]

    def _entry(self, row: Sequence[Any]) -> LogEntry:
        position, originator_id, version, topic, state = row
        event = self.mapper.to_domain_event(
            StoredEvent(
                originator_id=originator_id,
                originator_version=version,
                topic=topic,
                state=bytes(state),
            )
        )
        return LogEntry(
            position=position,
            aggregate_id=originator_id,
            version=version,
            kind=topic.rsplit(".", 1)[-1],
            event=event,
        )


async def table_exists(pool: asyncpg.Pool) -> bool:
    return bool(await pool.fetchval("SELECT to_regclass($1) IS NOT NULL", EVENTS_TABLE))
