"""Tenants (organizations) and their API keys, in PostgreSQL.

An API key is ``lsk_`` followed by 43 URL-safe characters (32 random bytes). Only
its SHA-256 is stored: the key has 256 bits of entropy, so a fast unsalted hash is
the standard choice (GitHub, Stripe) and lets a request find its key by an indexed
equality lookup. The prefix makes leaked keys easy to recognise in logs and scanners.

A key may expire (``expires_at``); ``last_used_at`` is when an API last verified it
(to within its key cache's TTL). Creating and revoking a key write an audit log line
naming the key id, never the key.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import orjson
import psycopg
import structlog

from domain.events import ORG_ID_PATTERN

T = TypeVar("T")

log = structlog.get_logger(__name__)

KEY_PREFIX = "lsk_"
_KEY_BYTES = 32
# token_urlsafe(32) is 43 characters of base64url without padding.
_KEY_RE = re.compile(r"^lsk_[A-Za-z0-9_-]{43}$")
# No ":" — the Redis read model joins org and lead ids with it into keys, so an org id
# holding one could name another tenant's keys.
ORG_ID_RE = ORG_ID_PATTERN

SCHEMA_DDL = """
CREATE TABLE IF NOT EXISTS organizations (
    id text PRIMARY KEY,
    name text NOT NULL,
    industry text,
    plan_type text NOT NULL DEFAULT 'standard',
    settings jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS api_keys (
    id text PRIMARY KEY,
    org_id text NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    key_hash bytea NOT NULL UNIQUE,
    name text,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
CREATE INDEX IF NOT EXISTS api_keys_org_idx ON api_keys (org_id);
-- Migration (keys created before expiry existed never expire).
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS expires_at timestamptz;
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS last_used_at timestamptz;
-- An admin key may also change its org's models from the console (promote).
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS admin boolean NOT NULL DEFAULT false;
"""

Executor = asyncpg.Connection | asyncpg.Pool


class TenancyError(ValueError):
    """A tenancy command that cannot be carried out (unknown org, duplicate id, bad input)."""


@dataclass(frozen=True, slots=True)
class Organization:
    id: str
    name: str
    industry: str | None
    plan_type: str
    settings: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    id: str
    org_id: str
    name: str | None
    created_at: datetime
    revoked_at: datetime | None
    expires_at: datetime | None = None
    last_used_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What an API needs to decide on a presented key."""

    id: str
    org_id: str
    revoked: bool
    expires_at: datetime | None
    expired: bool
    admin: bool = False

    @property
    def active(self) -> bool:
        return not self.revoked and not self.expired


async def ensure_schema(db: Executor) -> None:
    """Create the tenancy tables if missing; safe to run concurrently from several processes."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            await _ensure_schema(conn)
    else:
        await _ensure_schema(db)


async def _ensure_schema(conn: asyncpg.Connection) -> None:
    # Concurrent CREATE ... IF NOT EXISTS can still collide in the catalog; the lock orders them.
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('adapters.tenancy.schema'))")
        await conn.execute(SCHEMA_DDL)


async def create_org(
    db: Executor,
    org_id: str,
    name: str,
    *,
    industry: str | None = None,
    plan_type: str = "standard",
    settings: dict[str, Any] | None = None,
) -> Organization:
    if not ORG_ID_RE.match(org_id):
        raise TenancyError(
            f"invalid org id {org_id!r}: 1-128 letters, digits or . _ - (starting alphanumeric)"
        )
    if not name.strip():
        raise TenancyError("an organization needs a name")
    try:
        row = await db.fetchrow(
            "INSERT INTO organizations (id, name, industry, plan_type, settings) "
            "VALUES ($1, $2, $3, $4, $5::jsonb) "
            "RETURNING id, name, industry, plan_type, settings, created_at",
            org_id,
            name,
            industry,
            plan_type,
            orjson.dumps(settings or {}).decode(),
        )
    except asyncpg.UniqueViolationError as exc:
        raise TenancyError(f"organization {org_id!r} already exists") from exc
    assert row is not None
    return _org(row)


async def list_orgs(db: Executor) -> list[Organization]:
    rows = await db.fetch(
        "SELECT id, name, industry, plan_type, settings, created_at FROM organizations ORDER BY id"
    )
    return [_org(r) for r in rows]


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(_KEY_BYTES)


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def looks_like_key(key: str) -> bool:
    """Cheap shape check, so garbage never costs a database round trip."""
    return bool(_KEY_RE.match(key))


def fingerprint(key: str) -> str:
    """A short, non-reversible name for a presented key that matches no key id (logs)."""
    return hash_key(key)[:6].hex()


async def create_api_key(
    db: Executor,
    org_id: str,
    name: str | None = None,
    *,
    expires_in: timedelta | None = None,
    admin: bool = False,
) -> tuple[str, str]:
    """A new key for ``org_id``: returns (key id, the key). The key itself is not stored.
    With ``expires_in``, the key stops working that long from now; ``admin`` keys may
    also promote the org's own models from the console."""
    if expires_in is not None and expires_in <= timedelta(0):
        raise TenancyError("a key's lifetime must be positive")
    key = generate_key()
    # The id names the key in listings and revocation without revealing it.
    key_id = "key_" + secrets.token_hex(8)
    try:
        expires_at = await db.fetchval(
            "INSERT INTO api_keys (id, org_id, key_hash, name, expires_at, admin) "
            "VALUES ($1, $2, $3, $4, now() + $5::interval, $6) RETURNING expires_at",
            key_id,
            org_id,
            hash_key(key),
            name,
            expires_in,
            admin,
        )
    except asyncpg.ForeignKeyViolationError as exc:
        raise TenancyError(
            f"no organization {org_id!r}; create it with `leadscore orgs create`"
        ) from exc
    log.info(
        "audit: api key created",
        audit=True,
        key_id=key_id,
        org_id=org_id,
        admin=admin,
        expires_at=expires_at.isoformat() if expires_at else None,
    )
    return key_id, key


async def list_api_keys(db: Executor, org_id: str | None = None) -> list[ApiKeyInfo]:
    rows = await db.fetch(
        "SELECT id, org_id, name, created_at, revoked_at, expires_at, last_used_at "
        "FROM api_keys WHERE $1::text IS NULL OR org_id = $1 ORDER BY created_at, id",
        org_id,
    )
    return [ApiKeyInfo(**dict(r)) for r in rows]


async def revoke_api_key(db: Executor, key_id: str) -> bool:
    """Revoke a key by id; False when there is no such active key."""
    org = await db.fetchval(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL "
        "RETURNING org_id",
        key_id,
    )
    if org is None:
        return False
    log.info("audit: api key revoked", audit=True, key_id=key_id, org_id=org)
    return True


async def lookup_key(db: Executor, key: str) -> KeyRecord | None:
    """The stored key ``key`` hashes to, active or not; None when there is none."""
    if not looks_like_key(key):
        return None
    return await lookup_key_hash(db, hash_key(key))


async def lookup_key_hash(db: Executor, digest: bytes) -> KeyRecord | None:
    """The stored key whose hash is ``digest`` (a console session holds the hash, never
    the key), active or not; None when there is none."""
    row = await db.fetchrow(
        "SELECT id, org_id, revoked_at IS NOT NULL AS revoked, expires_at, "
        "coalesce(expires_at <= now(), false) AS expired, admin "
        "FROM api_keys WHERE key_hash = $1",
        digest,
    )
    return None if row is None else KeyRecord(**dict(row))


async def touch_key(db: Executor, key_id: str) -> None:
    """Record that ``key_id`` was just used (called once per key-cache fill, not per request)."""
    await db.execute("UPDATE api_keys SET last_used_at = now() WHERE id = $1", key_id)


async def org_for_key(db: Executor, key: str) -> str | None:
    """The org of an active key, or None for an unknown, revoked, expired or malformed key."""
    record = await lookup_key(db, key)
    return record.org_id if record is not None and record.active else None


def _org(row: asyncpg.Record) -> Organization:
    settings = row["settings"]
    return Organization(
        id=row["id"],
        name=row["name"],
        industry=row["industry"],
        plan_type=row["plan_type"],
        # asyncpg hands jsonb back as text unless a codec is registered.
        settings=orjson.loads(settings) if isinstance(settings, str) else dict(settings or {}),
        created_at=row["created_at"],
    )


async def ensure_orgs(db: Executor, org_ids: Iterable[str], *, plan_type: str = "standard") -> int:
    """Register the orgs not registered yet (named after their id); returns how many."""
    await ensure_schema(db)
    known = {o.id for o in await list_orgs(db)}
    created = 0
    for org_id in sorted(set(org_ids) - known):
        await create_org(db, org_id, org_id, plan_type=plan_type)
        created += 1
    return created


async def with_connection(dsn: str, action: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """Run ``action`` on a fresh connection with the tenancy schema in place."""
    conn = await asyncpg.connect(dsn)
    try:
        await ensure_schema(conn)
        return await action(conn)
    finally:
        await conn.close()


class KnownOrgs:
    """The registered orgs, cached; a miss reloads them at most every ``refresh_seconds``.

    So an org created a moment ago is accepted within seconds, while a flood of events
    for an unknown org costs one query per interval, not one per event.
    """

    def __init__(
        self,
        dsn: str,
        *,
        refresh_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dsn = dsn
        self.refresh_seconds = refresh_seconds
        self.clock = clock
        self._orgs: frozenset[str] = frozenset()
        self._loaded_at: float | None = None

    def known(self, org_id: str) -> bool:
        if org_id in self._orgs:
            return True
        if self._loaded_at is None or self.clock() - self._loaded_at >= self.refresh_seconds:
            self._orgs = self._load()
            self._loaded_at = self.clock()
        return org_id in self._orgs

    def _load(self) -> frozenset[str]:
        # Synchronous: the worker's processor thread asks, between batches' statements.
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            try:
                rows = conn.execute("SELECT id FROM organizations").fetchall()
            except psycopg.errors.UndefinedTable:
                return frozenset()  # no org registered yet
        return frozenset(str(r[0]) for r in rows)
