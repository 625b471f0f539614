"""The query API's PostgreSQL role reads every table and writes only what the API must
(query_api/db_role.py; README, "Security defaults")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from adapters import tenancy
from adapters.eventstore import open_store
from adapters.settings import DEV_API_ROLE, Settings
from devtools.workload import generate
from projections.log import EVENTS_TABLE, LogReader
from query_api import db_role
from query_api.projection_task import start_projection
from tests.support.factories import FixedScorer
from tests.support.pipeline import store_history
from tests.support.projections import Recording

pytestmark = pytest.mark.integration


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """Connected as the API's role after the owner prepared it, with an event store, an
    org and a key, as a running engine has."""
    open_store(settings.pg_dsn).close()
    await db_role.prepare(settings)
    owner = await asyncpg.connect(settings.pg_dsn)
    try:
        await tenancy.create_org(owner, "org-001", "Acme")
        await tenancy.create_api_key(owner, "org-001", "probe")
    finally:
        await owner.close()
    conn = await asyncpg.connect(settings.api_dsn)
    yield conn
    await conn.close()


async def test_the_api_connects_as_its_own_role(api: asyncpg.Connection) -> None:
    assert await api.fetchval("SELECT current_user") == DEV_API_ROLE
    assert (
        await api.fetchval(
            "SELECT rolsuper OR rolcreatedb OR rolcreaterole FROM pg_roles "
            "WHERE rolname = current_user"
        )
        is False
    )


async def test_it_reads_the_read_models_and_the_log(api: asyncpg.Connection) -> None:
    for table in ("leads", "lead_scores", "score_history", "organizations", "api_keys"):
        await api.fetch(f"SELECT * FROM {table} LIMIT 1")
    assert await api.fetchval(f"SELECT count(*) FROM {EVENTS_TABLE}") == 0


@pytest.mark.parametrize(
    "statement",
    [
        f"INSERT INTO {EVENTS_TABLE} (originator_id, originator_version, topic, state) "
        "VALUES (gen_random_uuid(), 1, 'x', '\\x00')",
        f"DELETE FROM {EVENTS_TABLE}",
        "INSERT INTO leads (org_id, lead_id) VALUES ('org-001', 'forged')",
        "UPDATE lead_scores SET total = 100",
        "DELETE FROM score_history",
        "UPDATE api_keys SET revoked_at = NULL",
        "INSERT INTO organizations (id, name) VALUES ('org-forged', 'x')",
        "CREATE TABLE planted (id int)",
        "TRUNCATE leads",
    ],
    ids=lambda s: " ".join(s.split()[:3]),
)
async def test_it_cannot_write_the_event_store_or_a_read_model(
    api: asyncpg.Connection, statement: str
) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await api.execute(statement)


async def test_it_writes_exactly_what_the_api_writes(api: asyncpg.Connection) -> None:
    assert await api.execute("UPDATE api_keys SET last_used_at = now()") == "UPDATE 1"
    await api.execute(
        "INSERT INTO projection_status (name, position) VALUES ('clickhouse', 7) "
        "ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position"
    )
    await api.execute(
        "INSERT INTO projection_quarantine (projection, position, aggregate_id, version, kind, "
        "org_id, reason, error_type) VALUES ('clickhouse', 1, gen_random_uuid(), 1, 'k', "
        "'org-001', 'r', 'E')"
    )
    await api.execute("DELETE FROM projection_quarantine WHERE position = 1")


async def test_a_table_the_owner_makes_later_is_readable(
    settings: Settings, api: asyncpg.Connection
) -> None:
    owner = await asyncpg.connect(settings.pg_dsn)
    try:
        await owner.execute("CREATE TABLE made_later (id int)")
    finally:
        await owner.close()
    assert await api.fetch("SELECT * FROM made_later") == []
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await api.execute("INSERT INTO made_later VALUES (1)")


async def test_a_missing_role_is_a_clear_error(settings: Settings) -> None:
    from dataclasses import replace

    missing = replace(
        settings,
        api_pg_dsn=settings.pg_dsn.replace("leadscore:leadscore@", "nobody_here:pw@", 1),
    )
    with pytest.raises(db_role.ApiRoleError, match="'nobody_here'.*does not exist"):
        await db_role.prepare(missing)


async def test_the_api_projection_regrants_a_log_it_was_denied(
    settings: Settings, api: asyncpg.Connection
) -> None:
    """A worker's table made while the API started can miss the API's grants (the API's
    ClickHouse projection then retried 'permission denied' forever): the API's projection
    grants again when it is denied, and goes on."""
    store_history(settings, list(generate(1, 10, 60, seed=3)), FixedScorer(), batch=30)
    owner = await asyncpg.connect(settings.pg_dsn)
    try:
        await owner.execute(f"REVOKE SELECT ON {EVENTS_TABLE} FROM {DEV_API_ROLE}")
        head = await LogReader(owner).head()  # type: ignore[arg-type]
    finally:
        await owner.close()
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await api.fetch(f"SELECT 1 FROM {EVENTS_TABLE} LIMIT 1")
    pool = await asyncpg.create_pool(settings.api_dsn, min_size=1, max_size=3)
    task = start_projection(pool, Recording(), regrant=lambda: db_role.prepare(settings))
    try:
        async with asyncio.timeout(30):
            while task.projection.applied < head:
                await asyncio.sleep(0.05)
    finally:
        await task.close()
        await pool.close()
    assert head > 0 and task.projection.applied == head
    assert await api.fetchval(f"SELECT count(*) FROM {EVENTS_TABLE}") > 0
