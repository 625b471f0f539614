"""Per-lead data keys: personal data is encrypted with a key of its lead's own.

Each lead has one random AES-256-GCM data key, stored *wrapped* (encrypted) by a
key-encryption key (KEK) from ``LEADSCORE_KEK`` / ``LEADSCORE_KEK_FILE`` in the
``lead_keys`` table, which this module alone creates, writes and reads. Forgetting a lead
destroys its data key (crypto-shredding): every encrypted copy of its personal data, in
events, snapshots and backups of them, becomes noise. The row stays, keyless, so a lead
forgotten once is never given a new key by a later event.

Several KEKs may be configured, newest first: the newest wraps, any unwraps, and
``rotate`` re-wraps every lead key with the newest so an old KEK can be retired.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

import asyncpg
import psycopg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from adapters.settings import Settings

TABLE = "lead_keys"
DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    aggregate_id uuid PRIMARY KEY,
    kek_id text,
    wrapped_key bytea,  -- NULL once forgotten: the data key is gone
    created_at timestamptz NOT NULL DEFAULT now(),
    forgotten_at timestamptz
)
"""
_DDL_LOCK = "leadscore.lead_keys.ddl"
NONCE_BYTES = 12
KEY_BYTES = 32


class LeadKeyError(RuntimeError):
    """A lead key cannot be unwrapped or used (no KEK for it, or tampered bytes)."""


class KekConfigError(ValueError):
    """``LEADSCORE_KEK`` / ``LEADSCORE_KEK_FILE`` does not hold usable keys."""


def new_kek() -> str:
    """A fresh key-encryption key, as ``LEADSCORE_KEK`` takes it."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


class KeyEncryptionKeys:
    """The configured KEKs, newest first; each is named by a hash of itself."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise KekConfigError("no key-encryption key configured (LEADSCORE_KEK)")
        self._by_id: dict[str, AESGCM] = {}
        self.ids: list[str] = []
        for key in keys:
            if len(key) != KEY_BYTES:
                raise KekConfigError(f"a key-encryption key must be {KEY_BYTES} bytes")
            kid = hashlib.sha256(b"leadscore-kek\x00" + key).hexdigest()[:16]
            self._by_id[kid] = AESGCM(key)
            self.ids.append(kid)

    @classmethod
    def parse(cls, text: str) -> KeyEncryptionKeys:
        keys = []
        for item in text.replace("\n", ",").split(","):
            if item.strip():
                try:
                    keys.append(base64.b64decode(item.strip(), validate=True))
                except (binascii.Error, ValueError) as exc:
                    raise KekConfigError("a key-encryption key is not base64") from exc
        return cls(keys)

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyEncryptionKeys:
        return cls.parse(settings.kek_text)

    @property
    def newest(self) -> str:
        return self.ids[0]

    def wrap(self, aggregate_id: UUID, data_key: bytes) -> tuple[str, bytes]:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._by_id[self.newest].encrypt(nonce, data_key, aggregate_id.bytes)
        return self.newest, nonce + sealed

    def unwrap(self, aggregate_id: UUID, kek_id: str, wrapped: bytes) -> bytes:
        kek = self._by_id.get(kek_id)
        if kek is None:
            raise LeadKeyError(
                f"lead key wrapped by KEK {kek_id}, which is not configured: add it to "
                "LEADSCORE_KEK (after the newest) until `leadscore keys rotate` has run"
            )
        try:
            return kek.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], aggregate_id.bytes)
        except InvalidTag as exc:
            raise LeadKeyError(f"lead key of {aggregate_id} does not unwrap") from exc


@dataclass(frozen=True, slots=True)
class KeyRow:
    """A ``lead_keys`` row: ``wrapped`` is None once the lead is forgotten."""

    kek_id: str | None
    wrapped: bytes | None


class KeyTable(Protocol):
    """Where lead keys are kept (PostgreSQL; a dict in unit tests)."""

    def fetch(self, ids: Sequence[UUID]) -> dict[UUID, KeyRow]: ...

    def insert(self, rows: dict[UUID, KeyRow]) -> None:
        """Add rows whose lead has none (a lead keeps the first key it got)."""

    def shred(self, aggregate_id: UUID) -> bool:
        """Destroy the lead's key, leaving the forgotten mark; True if it had one."""

    def to_rewrap(self, kek_id: str, limit: int) -> dict[UUID, KeyRow]:
        """Up to ``limit`` live keys wrapped by another KEK than ``kek_id``."""

    def rewrap(self, rows: dict[UUID, KeyRow]) -> None: ...


class MemoryKeyTable:
    """Lead keys in a dict: the event store on POPO (unit tests)."""

    def __init__(self) -> None:
        self.rows: dict[UUID, KeyRow] = {}

    def fetch(self, ids: Sequence[UUID]) -> dict[UUID, KeyRow]:
        return {i: self.rows[i] for i in ids if i in self.rows}

    def insert(self, rows: dict[UUID, KeyRow]) -> None:
        for agg_id, row in rows.items():
            self.rows.setdefault(agg_id, row)

    def shred(self, aggregate_id: UUID) -> bool:
        had = self.rows.get(aggregate_id, KeyRow(None, None)).wrapped is not None
        self.rows[aggregate_id] = KeyRow(None, None)
        return had

    def to_rewrap(self, kek_id: str, limit: int) -> dict[UUID, KeyRow]:
        stale = {i: r for i, r in self.rows.items() if r.wrapped is not None and r.kek_id != kek_id}
        return dict(list(stale.items())[:limit])

    def rewrap(self, rows: dict[UUID, KeyRow]) -> None:
        self.rows.update(rows)


Connect = Callable[[], AbstractContextManager[Any]]


class PostgresKeyTable:
    """``lead_keys`` in PostgreSQL through psycopg connections from ``connect``."""

    def __init__(self, connect: Connect) -> None:
        self.connect = connect

    def create_table(self) -> None:
        with self.connect() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (_DDL_LOCK,))
            conn.execute(DDL)

    def fetch(self, ids: Sequence[UUID]) -> dict[UUID, KeyRow]:
        if not ids:
            return {}
        with self.connect() as conn:
            try:
                rows = conn.execute(
                    f"SELECT aggregate_id, kek_id, wrapped_key FROM {TABLE} "
                    "WHERE aggregate_id = ANY(%s::uuid[])",
                    (list(ids),),
                ).fetchall()
            except psycopg.errors.UndefinedTable:
                conn.rollback()
                return {}  # a reader before any writer made the table: no keys yet
        return {_get(r, 0): KeyRow(_get(r, 1), _bytes(_get(r, 2))) for r in rows}

    def insert(self, rows: dict[UUID, KeyRow]) -> None:
        with self.connect() as conn, conn.transaction():
            conn.execute(
                f"INSERT INTO {TABLE} (aggregate_id, kek_id, wrapped_key) "
                "SELECT * FROM unnest(%s::uuid[], %s::text[], %s::bytea[]) "
                "ON CONFLICT (aggregate_id) DO NOTHING",
                (list(rows), [r.kek_id for r in rows.values()], [r.wrapped for r in rows.values()]),
            )

    def shred(self, aggregate_id: UUID) -> bool:
        with self.connect() as conn, conn.transaction():
            had = conn.execute(
                f"SELECT wrapped_key IS NOT NULL FROM {TABLE} WHERE aggregate_id = %s FOR UPDATE",
                (aggregate_id,),
            ).fetchone()
            conn.execute(
                f"INSERT INTO {TABLE} (aggregate_id, forgotten_at) VALUES (%s, now()) "
                "ON CONFLICT (aggregate_id) DO UPDATE SET wrapped_key = NULL, kek_id = NULL, "
                f"forgotten_at = coalesce({TABLE}.forgotten_at, now())",
                (aggregate_id,),
            )
        return bool(had and _get(had, 0))

    def to_rewrap(self, kek_id: str, limit: int) -> dict[UUID, KeyRow]:
        with self.connect() as conn:
            rows = conn.execute(
                f"SELECT aggregate_id, kek_id, wrapped_key FROM {TABLE} "
                "WHERE wrapped_key IS NOT NULL AND kek_id <> %s LIMIT %s",
                (kek_id, limit),
            ).fetchall()
        return {_get(r, 0): KeyRow(_get(r, 1), _bytes(_get(r, 2))) for r in rows}

    def rewrap(self, rows: dict[UUID, KeyRow]) -> None:
        # Only keys still live: a lead forgotten meanwhile stays forgotten.
        with self.connect() as conn, conn.transaction():
            conn.execute(
                f"UPDATE {TABLE} k SET kek_id = n.kek_id, wrapped_key = n.wrapped "
                "FROM unnest(%s::uuid[], %s::text[], %s::bytea[]) AS n(id, kek_id, wrapped) "
                "WHERE k.aggregate_id = n.id AND k.wrapped_key IS NOT NULL",
                (list(rows), [r.kek_id for r in rows.values()], [r.wrapped for r in rows.values()]),
            )


def _get(row: Any, i: int) -> Any:
    # psycopg rows are tuples or dicts, depending on the connection's row factory.
    return row[i] if isinstance(row, tuple) else list(row.values())[i]


def _bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


async def fetch_async(pool: asyncpg.Pool, ids: Sequence[UUID]) -> dict[UUID, KeyRow]:
    """The rows of ``ids`` (asyncpg: the projections' log reader)."""
    if not ids:
        return {}
    if not await pool.fetchval("SELECT to_regclass($1) IS NOT NULL", TABLE):
        return {}
    rows = await pool.fetch(
        f"SELECT aggregate_id, kek_id, wrapped_key FROM {TABLE} "
        "WHERE aggregate_id = ANY($1::uuid[])",
        list(ids),
    )
    return {r[0]: KeyRow(r[1], _bytes(r[2])) for r in rows}


class LeadKeys:
    """The data keys of leads, unwrapped and cached (bounded) for the event store's mapper.

    ``None`` for a lead means forgotten (or, on a reader without a table, no key): its
    personal data is dropped on write and blank on read.
    """

    def __init__(
        self, keks: KeyEncryptionKeys, table: KeyTable | None, cache_size: int = 100_000
    ) -> None:
        self.keks = keks
        self.table = table
        self.cache_size = cache_size
        self._cache: OrderedDict[UUID, AESGCM | None] = OrderedDict()

    def prepare(self, ids: Iterable[UUID]) -> None:
        """Have a key (or the forgotten mark) cached for each of ``ids``, making keys for
        leads that have none: one query for the lot, plus one insert for new leads."""
        missing = [i for i in dict.fromkeys(ids) if i not in self._cache]
        if not missing or self.table is None:
            return
        rows = self.table.fetch(missing)
        new = {}
        for agg_id in missing:
            if agg_id not in rows:
                kek_id, wrapped = self.keks.wrap(agg_id, AESGCM.generate_key(KEY_BYTES * 8))
                new[agg_id] = KeyRow(kek_id, wrapped)
        if new:
            self.table.insert(new)
            rows.update(self.table.fetch(list(new)))  # another writer's key wins a race
        self.load(rows)

    def load(self, rows: dict[UUID, KeyRow]) -> None:
        """Put fetched rows in the cache (unwrapping them)."""
        for agg_id, row in rows.items():
            self._put(agg_id, self._unwrap(agg_id, row))

    def replace(self, rows: dict[UUID, KeyRow]) -> None:
        """Forget everything cached and hold exactly ``rows`` (a log reader's batch)."""
        self._cache.clear()
        self.load(rows)

    def for_write(self, aggregate_id: UUID) -> AESGCM | None:
        if aggregate_id not in self._cache:
            self.prepare([aggregate_id])
        return self._cache.get(aggregate_id)

    def for_read(self, aggregate_id: UUID) -> AESGCM | None:
        if aggregate_id not in self._cache and self.table is not None:
            rows = self.table.fetch([aggregate_id])
            self.load(rows)
            return self._cache.get(aggregate_id)
        return self._cache.get(aggregate_id)

    def shred(self, aggregate_id: UUID) -> bool:
        """Destroy the lead's data key; True if it had one."""
        self._put(aggregate_id, None)
        return self.table.shred(aggregate_id) if self.table is not None else False

    def rotate(self, batch: int = 1000) -> int:
        """Re-wrap every live lead key with the newest KEK; how many were re-wrapped."""
        if self.table is None:
            return 0
        done = 0
        while rows := self.table.to_rewrap(self.keks.newest, batch):
            fresh = {}
            for agg_id, row in rows.items():
                assert row.kek_id is not None and row.wrapped is not None
                key = self.keks.unwrap(agg_id, row.kek_id, row.wrapped)
                kek_id, wrapped = self.keks.wrap(agg_id, key)
                fresh[agg_id] = KeyRow(kek_id, wrapped)
            self.table.rewrap(fresh)
            done += len(fresh)
        return done

    def _unwrap(self, agg_id: UUID, row: KeyRow) -> AESGCM | None:
        if row.wrapped is None or row.kek_id is None:
            return None
        return AESGCM(self.keks.unwrap(agg_id, row.kek_id, row.wrapped))

    def _put(self, agg_id: UUID, value: AESGCM | None) -> None:
        self._cache[agg_id] = value
        self._cache.move_to_end(agg_id)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def __iter__(self) -> Iterator[UUID]:
        return iter(self._cache)
