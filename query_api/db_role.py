"""The query API's PostgreSQL role: it reads the tables, and writes only what it must.

The API serves requests through its own role (``LEADSCORE_API_PG_DSN``; in dev the
``leadscore_api`` role `leadscore services up` makes), so a bug or an injected query in
the API cannot change the event store or a read model. Before the API opens its pool,
``prepare`` runs once as the tables' owner (``LEADSCORE_PG_DSN``, the engine's role): it
creates the tables the API needs, each through its owner module, and grants the API's
role exactly this:

- SELECT on every table of the schema, now and as the owner creates more (default
  privileges: the event store, webhooks and the model registry appear when a worker
  first needs them);
- the writes in ``WRITES`` below, and nothing else.

The role itself is the cluster's business (a DBA's, or `services up` in dev): making
roles takes a privilege the engine's role does not have.
"""

from __future__ import annotations

import asyncpg
import structlog
from psycopg.conninfo import conninfo_to_dict

from adapters import dead_letter_log, tenancy
from adapters.settings import Settings
from projections import quarantine
from projections.base import ensure_status_table
from projections.postgres import PostgresProjection

log = structlog.get_logger(__name__)

# Every write the API makes: (table, privileges, why). Each table keeps its one owner
# (the module named) for DDL; the API only writes these rows.
WRITES: tuple[tuple[str, str, str], ...] = (
    # adapters/tenancy.py; query_api/auth.py
    ("api_keys", "UPDATE (last_used_at)", "a key's last use, once per key-cache fill"),
    # projections/base.py; the ClickHouse projection the API runs with embedded chDB
    ("projection_status", "INSERT, UPDATE", "that projection's position, for `status`"),
    # projections/quarantine.py; the same projection
    ("projection_quarantine", "INSERT, UPDATE, DELETE", "entries that projection set aside"),
)
_LOCK = "leadscore.api.grants"  # API processes starting together must not GRANT at once


class ApiRoleError(RuntimeError):
    """The API's database role is missing or cannot be prepared."""


def role_of(dsn: str) -> str:
    """The role a DSN signs in as (libpq's default user when it names none)."""
    return str(conninfo_to_dict(dsn).get("user") or "leadscore")


async def prepare(settings: Settings) -> None:
    """As the tables' owner: make the tables the API reads and writes, then grant its role."""
    owner, role = role_of(settings.pg_dsn), role_of(settings.api_dsn)
    pool = await asyncpg.create_pool(settings.pg_dsn, min_size=1, max_size=1)
    try:
        await tenancy.ensure_schema(pool)
        # An API started before any worker answers "no leads" instead of failing.
        await PostgresProjection(pool).setup()
        await ensure_status_table(pool)
        await quarantine.ensure_schema(pool)
        await dead_letter_log.ensure_schema(pool)
        if role == owner:
            log.warning("the query API uses the tables' owner role", role=role)
            return
        async with pool.acquire() as conn:
            if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
                raise ApiRoleError(
                    f"PostgreSQL role {role!r} (LEADSCORE_API_PG_DSN) does not exist: create "
                    f"it (CREATE ROLE {role} LOGIN PASSWORD '...'), or run "
                    "`leadscore services up` in dev"
                )
            await grant(conn, role)
    finally:
        await pool.close()


async def grant(conn: asyncpg.Connection, role: str) -> None:
    """Grant ``role`` what the API needs, in two transactions (API processes starting
    together take turns: concurrent GRANTs fail).

    Tables this owner creates later (a worker's first webhook, the event store) take
    their grant from the default privileges, which a CREATE TABLE sees only once they are
    committed; so they are committed first, and only then are the tables that exist
    granted. In one transaction, a worker's table made while it was open had neither.
    """
    r = _ident(role)
    db = _ident(await conn.fetchval("SELECT current_database()"))
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", _LOCK)
        await conn.execute(
            f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {r}"
        )
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", _LOCK)
        await conn.execute(f"GRANT CONNECT ON DATABASE {db} TO {r}")
        await conn.execute(f"GRANT USAGE ON SCHEMA public TO {r}")
        await conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {r}")
        for table, privileges, _why in WRITES:
            await conn.execute(f"GRANT {privileges} ON {_ident(table)} TO {r}")


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
