"""The event store: the Lead aggregates in PostgreSQL through the eventsourcing library.

It is the single source of truth. Its notification log gives every stored domain
event one global position; score-events and read models follow that log.
"""

from __future__ import annotations

import base64
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse
from uuid import UUID

import orjson
import psycopg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing import persistence as es_persistence
from eventsourcing.application import (
    AggregateNotFoundError,
    Application,
    ProcessingEvent,
)
from eventsourcing.domain import DomainEventProtocol, Snapshot
from eventsourcing.persistence import (
    IntegrityError,
    JSONTranscoder,
    Mapper,
    Notification,
    StoredEvent,
)
from eventsourcing.postgres import (
    PostgresAggregateRecorder,
    PostgresApplicationRecorder,
    PostgresDatastore,
)
from eventsourcing.utils import get_topic, resolve_topic
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Composed, Identifier

from adapters.lead_keys import (
    KeyEncryptionKeys,
    LeadKeyError,
    LeadKeys,
    MemoryKeyTable,
    PostgresKeyTable,
)
from adapters.settings import Settings, get_settings
from domain.events import PII_FIELDS
from domain.lead import Lead

SCORED_TOPIC = f"{Lead.LeadScored.__module__}:{Lead.LeadScored.__qualname__}"
FORGOTTEN_TOPIC = f"{Lead.LeadForgotten.__module__}:{Lead.LeadForgotten.__qualname__}"


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


# The advisory lock's first key (its second: hashtext of the events table's name), in
# the two-key space, which never overlaps the one-key locks of adapters/positions.py.
STORE_LOCK = 0x1EAD


@dataclass(frozen=True)
class LockTiming:
    """How one save used the event store's write lock.

    ``waited_s``: the lock's time, between two marks of PostgreSQL's clock
    around it: the wait for other writers. ``held_s``: from the save's statements queued
    to its commit returning, less ``waited_s``, on this process's clock: the time no other
    writer could store. It includes the replies' round trips, so it is an upper bound on
    the server's hold."""

    waited_s: float
    held_s: float
    events: int


LockObserver = Callable[[LockTiming], None]


class ColumnArrayRecorder(PostgresApplicationRecorder):
    """The library's recorder, inserting a batch's events as binary column arrays, with
    the lead-event id each event applies in a column of its own.

    The library sends one array of a composite type, which psycopg dumps in Python in
    text format (hex-escaping every state): about 70 µs per event, most of a batch's
    save. Arrays of uuid, bigint, text and bytea go through psycopg's C dumpers in binary.
    Same table, same rows, same order of notification ids; NOTIFY is the library's own.

    Writers are serialised as the library does it, so that notification ids commit in
    order and a follower reading "after position N" never skips a late commit, but with
    a transaction-scoped advisory lock (``STORE_LOCK``) in place of the library's ``LOCK
    TABLE ... IN EXCLUSIVE MODE``. The table lock conflicts with autovacuum's SHARE UPDATE
    EXCLUSIVE: a worker's save waited behind an autovacuum of the events table until
    autovacuum cancelled itself after ``deadlock_timeout`` (1 s), measured as an 800 ms
    stall of every lead-event in flight (the PostgreSQL log said "skipping analyze of
    leads_events --- lock not available" at that moment), and an anti-wraparound vacuum,
    which does not cancel itself, would have stopped every writer for its whole run.
    Every writer of the events table goes through this recorder (``open_store``).

    ``source_event_id`` (NULL for events no lead-event caused, such as LeadScored) has a
    unique index per lead: it answers "was this lead-event applied?" for ids older than
    what a Lead remembers, and no lead-event can be stored twice whatever a writer does.
    """

    def __init__(self, datastore: PostgresDatastore, events_table_name: str) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        names = {
            "schema": Identifier(datastore.schema),
            "table": Identifier(events_table_name),
            "index": Identifier(f"{events_table_name}_source_event_id_uidx"),
        }
        self.insert_columns_statement = SQL(
            "INSERT INTO {schema}.{table} "
            "(originator_id, originator_version, topic, state, source_event_id) "
            "SELECT * FROM unnest(%b::uuid[], %b::bigint[], %b::text[], %b::bytea[], %b::text[]) "
            "RETURNING notification_id"
        ).format(**names)
        self.mark_statement = SQL("SELECT extract(epoch FROM statement_timestamp()) AS marked_at")
        self.store_lock_statement = SQL("SELECT pg_advisory_xact_lock(%s, hashtext(%s))")
        self.store_lock_key = (STORE_LOCK, f"{datastore.schema}.{events_table_name}")
        # Told how each save used the write lock (streams/processor.py: metrics); per thread,
        # the time this thread's save was sent.
        self.lock_observer: LockObserver | None = None
        self._sent = threading.local()
        self.select_source_ids_statement = SQL(
            "SELECT t.originator_id, t.source_event_id FROM {schema}.{table} t "
            "JOIN unnest(%b::uuid[], %b::text[]) AS q(originator_id, source_event_id) "
            "ON t.originator_id = q.originator_id AND t.source_event_id = q.source_event_id"
        ).format(**names)
        self.has_source_column_statement = SQL(
            "SELECT 1 FROM information_schema.columns WHERE table_schema = %s "
            "AND table_name = %s AND column_name = 'source_event_id'"
        )
        self.add_source_column_statement = SQL(
            "ALTER TABLE {schema}.{table} ADD COLUMN source_event_id text"
        ).format(**names)
        # Events stored before the column existed: their ids are in their state.
        self.fill_source_column_statement = SQL(
            "UPDATE {schema}.{table} SET source_event_id = "
            "convert_from(state, 'UTF8')::jsonb ->> 'source_event_id' WHERE topic <> %s"
        ).format(**names)
        self.create_source_index_statement = SQL(
            "CREATE UNIQUE INDEX IF NOT EXISTS {index} ON {schema}.{table} "
            "(originator_id, source_event_id) WHERE source_event_id IS NOT NULL"
        ).format(**names)

    def create_table(self) -> None:
        super().create_table()
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                self.has_source_column_statement,
                (self.datastore.schema or "public", self.events_table_name),
            )
            if curs.fetchone() is None:  # a table made before the column: add it once
                curs.execute(self.add_source_column_statement)
                curs.execute(self.fill_source_column_statement, (SCORED_TOPIC,))
            curs.execute(self.create_source_index_statement)

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        self._sent.at = 0.0
        self._sent.waited = 0.0
        self._sent.marks = ()
        ids = super().insert_events(stored_events, **kwargs)
        if self.lock_observer is not None and self._sent.at:
            whole = time.perf_counter() - self._sent.at
            waited = self._sent.waited
            self.lock_observer(LockTiming(waited, max(0.0, whole - waited), len(stored_events)))
        return ids

    def _fetch_ids_after_insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        rows = curs.fetchall()
        if self._sent.marks:
            before, after = (m.fetchone() for m in self._sent.marks)
            for m in self._sent.marks:
                m.close()
            if before is not None and after is not None:
                self._sent.waited = max(0.0, float(after["marked_at"] - before["marked_at"]))
        if len(rows) != len(stored_events):
            raise es_persistence.ProgrammingError(
                f"Couldn't get all notification IDs (got {len(rows)}, "
                f"expected {len(stored_events)})"
            )
        return [row["notification_id"] for row in rows]

    def _insert_stored_events(
        self,
        curs: Cursor[DictRow],
        stored_events: Sequence[StoredEvent],
        *,
        source_event_ids: Sequence[str | None] = (),
        **_: Any,
    ) -> None:
        columns = (
            [e.originator_id for e in stored_events],
            [e.originator_version for e in stored_events],
            [e.topic for e in stored_events],
            [e.state for e in stored_events],
            list(source_event_ids) or [None] * len(stored_events),
        )
        # Two marks of PostgreSQL's clock around the lock, pipelined with it (no round
        # trip): the second's start less the first's is the lock's wait.
        self._sent.at = time.perf_counter()
        marks = (curs.connection.cursor(), curs.connection.cursor())
        marks[0].execute(self.mark_statement, prepare=True)
        self._lock_table(curs)
        marks[1].execute(self.mark_statement, prepare=True)
        self._sent.marks = marks
        self._notify_channel(curs)
        curs.execute(self.insert_columns_statement, columns, prepare=True)

    def _lock_table(self, curs: Cursor[DictRow]) -> None:
        """Serialise this transaction's insert with every other writer's (see the class):
        released at commit or rollback."""
        curs.execute(self.store_lock_statement, self.store_lock_key, prepare=True)

    def stored_source_ids(self, keys: Sequence[tuple[UUID, str]]) -> set[tuple[UUID, str]]:
        """Which (lead, lead-event id) pairs of ``keys`` are stored."""
        if not keys:
            return set()
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                self.select_source_ids_statement,
                ([k[0] for k in keys], [k[1] for k in keys]),
                prepare=True,
            )
            return {(row["originator_id"], row["source_event_id"]) for row in curs.fetchall()}


# Where each kind of stored event keeps personal data: (the dict holding it, or None for
# the event itself; its profile dict; its attributes dict). Other kinds carry none.
SEALED = "_pii"  # the stored state's field holding the encrypted part
PII_PLACES: dict[str, tuple[str | None, str, str]] = {
    get_topic(Lead.LeadCreated): (None, "profile", "attributes"),  # type: ignore[attr-defined]
    get_topic(Lead.LeadUpdated): (None, "changes", "attributes"),  # type: ignore[attr-defined]
    get_topic(Snapshot): ("state", "profile", "attributes"),
}


class PiiMapper(Mapper[UUID]):
    """The library's mapper, with personal data sealed per lead.

    Before a LeadCreated, LeadUpdated or snapshot is encoded, its PII profile fields
    (domain.events.PII_FIELDS) and custom attributes move out of the clear JSON into one
    AES-GCM ciphertext under the lead's own data key (adapters/lead_keys.py), bound to
    the event's lead and version. Everything scoring and the projections need besides
    (activity, counts, firmographics, scores) stays clear, so only these events pay.
    Reading one whose lead was forgotten (its key destroyed) gives the event without its
    personal data; writing one for a forgotten lead drops it.
    """

    keys: LeadKeys

    def to_stored_event(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        topic = get_topic(domain_event.__class__)
        event_state = dict(vars(domain_event))
        originator_id = event_state.pop("originator_id")
        originator_version = event_state.pop("originator_version")
        class_version = getattr(type(domain_event), "class_version", 1)
        if class_version > 1:
            event_state["class_version"] = class_version
        place = PII_PLACES.get(topic)
        if place is not None:
            self._seal(event_state, place, originator_id, originator_version)
        return StoredEvent(
            originator_id=originator_id,
            originator_version=originator_version,
            topic=topic,
            state=self.transcoder.encode(event_state),
        )

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[UUID]:
        if b'"_pii"' not in stored_event.state:
            return super().to_domain_event(stored_event)
        cls = resolve_topic(stored_event.topic)
        event_state: dict[str, Any] = self.transcoder.decode(stored_event.state)
        self._unseal(event_state, stored_event)
        event_state["originator_id"] = stored_event.originator_id
        event_state["originator_version"] = stored_event.originator_version
        class_version = getattr(cls, "class_version", 1)
        from_version = event_state.pop("class_version", 1)
        while from_version < class_version:
            getattr(cls, f"upcast_v{from_version}_v{from_version + 1}")(event_state)
            from_version += 1
        domain_event = object.__new__(cls)
        object.__setattr__(domain_event, "__dict__", event_state)
        return domain_event  # type: ignore[no-any-return]

    def _seal(
        self,
        state: dict[str, Any],
        place: tuple[str | None, str, str],
        originator_id: UUID,
        version: int,
    ) -> None:
        where, profile_key, attributes_key = place
        holder = state if where is None else dict(state[where])
        profile = holder.get(profile_key) or {}
        secret = {k: v for k, v in profile.items() if k in PII_FIELDS}
        attributes = holder.get(attributes_key) or {}
        if not secret and not attributes:
            return
        if where is not None:
            state[where] = holder
        holder[profile_key] = {k: v for k, v in profile.items() if k not in PII_FIELDS}
        holder[attributes_key] = {} if where is not None else None
        aead = self.keys.for_write(originator_id)
        if aead is None:
            return  # forgotten: the personal data is not stored at all
        nonce = os.urandom(12)
        plain = orjson.dumps([secret, attributes])
        sealed = aead.encrypt(nonce, plain, _aad(originator_id, version))
        state[SEALED] = base64.b64encode(nonce + sealed).decode()

    def _unseal(self, state: dict[str, Any], stored: StoredEvent) -> None:
        sealed = state.pop(SEALED, None)
        place = PII_PLACES.get(stored.topic)
        if sealed is None or place is None:
            return
        aead: AESGCM | None = self.keys.for_read(stored.originator_id)
        if aead is None:
            return  # forgotten: the event without its personal data
        raw = base64.b64decode(sealed)
        try:
            plain = aead.decrypt(
                raw[:12], raw[12:], _aad(stored.originator_id, stored.originator_version)
            )
        except InvalidTag as exc:
            raise LeadKeyError(
                f"personal data of {stored.originator_id} v{stored.originator_version} "
                "does not decrypt with its lead key"
            ) from exc
        secret, attributes = orjson.loads(plain)
        where, profile_key, attributes_key = place
        holder = state if where is None else state[where]
        holder[profile_key] = {**(holder.get(profile_key) or {}), **secret}
        if attributes:
            holder[attributes_key] = attributes


def _aad(originator_id: UUID, version: int) -> bytes:
    return originator_id.bytes + version.to_bytes(8, "big", signed=True)


class OrjsonTranscoder(JSONTranscoder):
    """The library's JSON format, encoded by orjson (several times faster than json).

    Datetimes are passed to the library's transcodings, so the bytes decode to the same
    objects with the library's own JSONTranscoder (readers such as the projections use
    it; tests/unit/test_eventstore.py checks every event kind). Our events hold no UUIDs
    in their state (orjson would write those as plain strings).
    """

    def encode(self, obj: Any) -> bytes:
        return orjson.dumps(obj, default=self._encode_obj, option=orjson.OPT_PASSTHROUGH_DATETIME)

    def decode(self, data: bytes) -> Any:
        return self._revive(orjson.loads(data))

    def _revive(self, value: Any) -> Any:
        # What json's object_hook does, bottom-up, on the document orjson parsed; in place,
        # visiting only containers (most values are plain strings and numbers).
        if type(value) is dict:
            for key, item in value.items():
                if type(item) in _CONTAINERS:
                    value[key] = self._revive(item)
            if len(value) == 2 and "_type_" in value and "_data_" in value:
                return self._decode_obj(value)
        elif type(value) is list:
            for i, item in enumerate(value):
                if type(item) in _CONTAINERS:
                    value[i] = self._revive(item)
        return value


_CONTAINERS = (dict, list)


def postgres_env(dsn: str, *, cache_size: int, pool_size: int = 4) -> dict[str, str]:
    """eventsourcing's POSTGRES_* settings from a libpq URL."""
    url = urlparse(dsn)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "APPLICATION_RECORDER_TOPIC": f"{__name__}:ColumnArrayRecorder",
        "TRANSCODER_TOPIC": f"{__name__}:OrjsonTranscoder",
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


# A lead's state is stored as a snapshot every this many of its events (about 70
# lead-events, with their scores), so a lead missing from the cache is rebuilt from at
# most this many events after its latest snapshot, however long its history.
SNAPSHOT_INTERVAL = Settings.snapshot_interval


class LeadStore(Application[UUID]):
    """Leads as event-sourced aggregates. Synchronous: call it off the event loop.

    Snapshots (the library's, in their own table) are taken by ``save_leads`` from the
    leads it saves, every ``snapshot_interval`` versions of a lead; 0 takes none. Both
    ways of loading a lead (``load``'s one query for many, the library's ``get``) start
    from the latest snapshot. A snapshot is a copy of a Lead's attributes: a change to
    them bumps ``Lead.class_version`` with an upcast (domain/lead.py).
    """

    name = "Leads"
    is_snapshotting_enabled = True
    snapshot_class = Snapshot
    snapshot_interval = SNAPSHOT_INTERVAL

    def __init__(
        self, env: dict[str, str] | None = None, *, keks: KeyEncryptionKeys | None = None
    ) -> None:
        super().__init__(env)
        keks = keks or KeyEncryptionKeys.from_settings(get_settings())
        recorder = self.recorder
        if isinstance(recorder, PostgresApplicationRecorder):
            table = PostgresKeyTable(recorder.datastore.get_connection)
            # A reader's role may not create tables (CREATE_TABLE=n, the query API's).
            if self.env.get("CREATE_TABLE", "y").lower() not in ("n", "no", "false", "0"):
                table.create_table()
            self.keys = LeadKeys(keks, table)
        else:
            self.keys = LeadKeys(keks, MemoryKeyTable())
        if isinstance(self.mapper, PiiMapper):  # a subclass may choose another mapper
            self.mapper.keys = self.keys

    def construct_mapper(self) -> Mapper[UUID]:
        return self.factory.mapper(transcoder=self.construct_transcoder(), mapper_class=PiiMapper)

    @property
    def pii_mapper(self) -> PiiMapper:
        assert isinstance(self.mapper, PiiMapper)
        return self.mapper

    def load(self, ids: Iterable[UUID]) -> dict[UUID, Lead | None]:
        """The current state of each lead (None: never stored). Leads not in the cache are
        rebuilt from one query for all their events, not one query each: a batch brings
        many new leads, and a replay or a cold worker many stored ones."""
        cache = self.repository.cache
        ids = list(ids)
        missing = [i for i in ids if cache is None or i not in cache.cache]
        rebuilt = self._rebuild(missing) if len(missing) > 1 else None
        found: dict[UUID, Lead | None] = {}
        for agg_id in ids:
            if rebuilt is not None and agg_id in rebuilt:
                found[agg_id] = rebuilt[agg_id]
                continue
            try:
                found[agg_id] = self.repository.get(agg_id)
            except AggregateNotFoundError:
                found[agg_id] = None
        return found

    def _rebuild(self, ids: Sequence[UUID]) -> dict[UUID, Lead | None] | None:
        """Leads ``ids`` from their latest snapshots and the events after them, in two
        queries, put in the cache; None: not PostgreSQL."""
        recorder = self.recorder
        if not isinstance(recorder, PostgresApplicationRecorder):
            return None  # other backends: one get() each
        with recorder.datastore.get_connection() as conn, conn.cursor() as curs:
            snapshots = self._latest_snapshots(curs, ids)
            curs.execute(
                _on_table(
                    recorder,
                    "SELECT e.originator_id, e.originator_version, e.topic, e.state "
                    "FROM unnest(%b::uuid[], %b::bigint[]) AS w(originator_id, after) "
                    "JOIN {schema}.{table} e ON e.originator_id = w.originator_id "
                    "AND e.originator_version > w.after "
                    "ORDER BY e.originator_id, e.originator_version",
                ),
                (
                    list(ids),
                    [snapshots[i].originator_version if i in snapshots else 0 for i in ids],
                ),
            )
            rows = curs.fetchall()
        leads: dict[UUID, Lead | None] = dict.fromkeys(ids)
        for agg_id, snapshot in snapshots.items():
            leads[agg_id] = self.mapper.to_domain_event(snapshot).mutate(None)  # type: ignore[attr-defined]
        for row in rows:
            agg_id = row["originator_id"]
            # project_aggregate, without its typing.Protocol check per event.
            leads[agg_id] = self.mapper.to_domain_event(_stored(row)).mutate(leads[agg_id])  # type: ignore[attr-defined]
        cache = self.repository.cache
        if cache is not None:
            for agg_id, lead in leads.items():
                if lead is not None:
                    cache.put(agg_id, lead)
        return leads

    def _latest_snapshots(
        self, curs: Cursor[DictRow], ids: Sequence[UUID]
    ) -> dict[UUID, StoredEvent]:
        """The latest snapshot of each of ``ids`` that has one."""
        if self.snapshots is None or not isinstance(
            self.snapshots.recorder, PostgresAggregateRecorder
        ):
            return {}
        curs.execute(
            _on_table(
                self.snapshots.recorder,
                "SELECT DISTINCT ON (originator_id) originator_id, originator_version, topic, "
                "state FROM {schema}.{table} WHERE originator_id = ANY(%b::uuid[]) "
                "ORDER BY originator_id, originator_version DESC",
            ),
            (list(ids),),
        )
        return {row["originator_id"]: _stored(row) for row in curs.fetchall()}

    def save_leads(self, leads: Sequence[Lead]) -> None:
        """Store all new events of ``leads`` in one transaction."""
        if not leads:
            return
        # Application.save, without its two typing.Protocol isinstance checks per object
        # (about 15 µs per lead on Python 3.11): we know these are Lead aggregates.
        processing = ProcessingEvent[UUID]()
        due: list[Lead] = []  # leads whose new events cross a multiple of the interval
        interval = self.snapshot_interval if self.snapshots is not None else 0
        for lead in leads:
            new = lead.collect_events()
            processing.events.extend(new)
            processing.aggregates[lead.id] = lead
            if interval and lead.version // interval > (lead.version - len(new)) // interval:
                due.append(lead)
        # The leads' data keys, made for new leads, in one query before the mapper needs them.
        self.keys.prepare(lead.id for lead in leads)
        processing.saved_kwargs["source_event_ids"] = [
            getattr(e, "source_event_id", None) for e in processing.events
        ]
        try:
            recordings = self._record(processing)
        except IntegrityError as exc:
            self.evict([lead.id for lead in leads])
            raise ConcurrentWriteError(str(exc)) from exc
        if due and self.snapshots is not None:
            # After the events they follow are stored; one insert for the batch. Lost
            # with a crash in between, a snapshot is taken again at the next interval.
            self.snapshots.put([Snapshot.take(lead) for lead in due])
        self._notify(recordings)

    def stored_event_ids(self, keys: Sequence[tuple[UUID, str]]) -> set[tuple[UUID, str]]:
        """Which (lead, lead-event id) pairs of ``keys`` the store holds: the answer to
        ``Lead.knows_applied`` when a lead no longer remembers (domain/processing.py)."""
        recorder = self.recorder
        if isinstance(recorder, ColumnArrayRecorder):
            return recorder.stored_source_ids(keys)
        # Other backends (tests on POPO): from each lead's whole history.
        wanted = set(keys)
        found: set[tuple[UUID, str]] = set()
        for agg_id in {k[0] for k in keys}:
            for stored in recorder.select_events(agg_id):
                event_id = getattr(self.mapper.to_domain_event(stored), "source_event_id", None)
                if (agg_id, event_id) in wanted:
                    found.add((agg_id, event_id))
        return found

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


def _on_table(recorder: PostgresAggregateRecorder, query: str) -> Composed:
    """``query`` with {schema}.{table} naming the table of ``recorder``."""
    return SQL(query).format(
        schema=Identifier(recorder.datastore.schema),
        table=Identifier(recorder.events_table_name),
    )


def _stored(row: DictRow) -> StoredEvent:
    """A row of the events or the snapshots table, as the library's StoredEvent."""
    return StoredEvent(
        originator_id=row["originator_id"],
        originator_version=row["originator_version"],
        topic=row["topic"],
        state=bytes(row["state"]),
    )


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


# The stored events' table, and the channel the library NOTIFYs in each transaction that
# stores events (PostgresApplicationRecorder: the table's name, dots made underscores).
EVENTS_TABLE = f"{LeadStore.name.lower()}_events"
LOG_CHANNEL = EVENTS_TABLE.replace(".", "_")


def open_store(
    dsn: str,
    *,
    cache_size: int = 100_000,
    snapshot_interval: int = SNAPSHOT_INTERVAL,
    keks: KeyEncryptionKeys | None = None,
) -> LeadStore:
    with ddl_lock(dsn):  # the library creates its tables on construction
        store = LeadStore(env=postgres_env(dsn, cache_size=cache_size), keks=keks)
    store.snapshot_interval = snapshot_interval
    return store
