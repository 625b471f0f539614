"""Organizations and API keys on real PostgreSQL, through the library and the CLI."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import asyncpg
import pytest

from adapters import tenancy
from adapters.settings import Settings, settings_env

pytestmark = pytest.mark.integration


@pytest.fixture
async def conn(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(settings.pg_dsn)
    await tenancy.ensure_schema(c)
    yield c
    await c.close()


async def test_ensure_schema_is_idempotent_and_safe_concurrently(settings: Settings) -> None:
    pool = await asyncpg.create_pool(settings.pg_dsn, min_size=4, max_size=4)
    try:
        await asyncio.gather(*(tenancy.ensure_schema(pool) for _ in range(4)))
        await tenancy.ensure_schema(pool)
        tables = await pool.fetch(
            "SELECT tablename FROM pg_tables WHERE tablename IN ('organizations', 'api_keys')"
        )
        assert {t["tablename"] for t in tables} == {"organizations", "api_keys"}
    finally:
        await pool.close()


async def test_orgs_are_created_once_and_listed(conn: asyncpg.Connection) -> None:
    org = await tenancy.create_org(
        conn,
        "acme",
        "Acme Inc",
        industry="software",
        plan_type="enterprise",
        settings={"score_threshold": 70},
    )
    assert (org.id, org.name, org.industry, org.plan_type) == (
        "acme",
        "Acme Inc",
        "software",
        "enterprise",
    )
    assert org.settings == {"score_threshold": 70}
    await tenancy.create_org(conn, "beta", "Beta")
    assert [o.id for o in await tenancy.list_orgs(conn)] == ["acme", "beta"]
    with pytest.raises(tenancy.TenancyError, match="already exists"):
        await tenancy.create_org(conn, "acme", "Again")
    for bad in ("", " acme", "a/b", "x" * 129, "-lead"):
        with pytest.raises(tenancy.TenancyError, match="invalid org id"):
            await tenancy.create_org(conn, bad, "Bad")
    with pytest.raises(tenancy.TenancyError, match="name"):
        await tenancy.create_org(conn, "nameless", "  ")


async def test_keys_are_stored_hashed_and_resolve_to_their_org(conn: asyncpg.Connection) -> None:
    await tenancy.create_org(conn, "acme", "Acme")
    await tenancy.create_org(conn, "beta", "Beta")
    key_id, key = await tenancy.create_api_key(conn, "acme", "crm sync")
    _, other = await tenancy.create_api_key(conn, "beta")
    assert key.startswith(tenancy.KEY_PREFIX) and len(key) == len(tenancy.KEY_PREFIX) + 43
    assert tenancy.looks_like_key(key)
    # Only the SHA-256 is kept: nothing in the table contains the key itself.
    dump = str([tuple(r) for r in await conn.fetch("SELECT * FROM api_keys")])
    assert key not in dump and key.removeprefix(tenancy.KEY_PREFIX) not in dump
    stored = await conn.fetchval("SELECT key_hash FROM api_keys WHERE id = $1", key_id)
    assert bytes(stored) == hashlib.sha256(key.encode()).digest()

    assert await tenancy.org_for_key(conn, key) == "acme"
    assert await tenancy.org_for_key(conn, other) == "beta"
    assert await tenancy.org_for_key(conn, tenancy.generate_key()) is None
    assert await tenancy.org_for_key(conn, key[:-1]) is None
    assert await tenancy.org_for_key(conn, "") is None

    listed = await tenancy.list_api_keys(conn, "acme")
    assert [(k.id, k.org_id, k.name, k.revoked_at) for k in listed] == [
        (key_id, "acme", "crm sync", None)
    ]
    assert await tenancy.revoke_api_key(conn, key_id)
    assert not await tenancy.revoke_api_key(conn, key_id)  # already revoked
    assert await tenancy.org_for_key(conn, key) is None
    assert await tenancy.org_for_key(conn, other) == "beta"


async def test_a_key_needs_an_existing_org(conn: asyncpg.Connection) -> None:
    with pytest.raises(tenancy.TenancyError, match="no organization"):
        await tenancy.create_api_key(conn, "ghost")


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings_env(settings), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "leadscore.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_creates_orgs_and_prints_the_key_alone_on_the_last_line(settings: Settings) -> None:
    made = cli(
        settings,
        "orgs",
        "create",
        "--id",
        "acme",
        "--name",
        "Acme Inc",
        "--industry",
        "software",
        "--plan-type",
        "enterprise",
    )
    assert made.returncode == 0, made.stdout + made.stderr
    again = cli(settings, "orgs", "create", "--id", "acme", "--name", "Acme Inc")
    assert again.returncode == 1 and "already exists" in again.stdout
    listed = cli(settings, "orgs", "list")
    assert listed.returncode == 0 and "acme" in listed.stdout and "enterprise" in listed.stdout

    created = cli(settings, "apikeys", "create", "--org", "acme", "--name", "tests")
    assert created.returncode == 0, created.stdout + created.stderr
    key = created.stdout.rstrip("\n").splitlines()[-1]
    assert tenancy.looks_like_key(key)

    async def org_of_key() -> str | None:
        c = await asyncpg.connect(settings.pg_dsn)
        try:
            return await tenancy.org_for_key(c, key)
        finally:
            await c.close()

    assert asyncio.run(org_of_key()) == "acme"
    keys = cli(settings, "apikeys", "list", "--org", "acme")
    assert keys.returncode == 0 and key not in keys.stdout
    key_id = next(w for w in keys.stdout.split() if w.startswith("key_"))
    assert cli(settings, "apikeys", "revoke", key_id).returncode == 0
    assert asyncio.run(org_of_key()) is None
    assert cli(settings, "apikeys", "revoke", key_id).returncode == 1

    orphan = cli(settings, "apikeys", "create", "--org", "ghost")
    assert orphan.returncode == 1 and "no organization" in orphan.stdout

    short = cli(settings, "apikeys", "create", "--org", "acme", "--expires-in-days", "30")
    assert short.returncode == 0, short.stdout + short.stderr
    listed = cli(settings, "apikeys", "list", "--org", "acme")
    assert "expires" in listed.stdout and "last used" in listed.stdout


def test_api_keys_from_before_expiry_are_migrated_and_keep_working(settings: Settings) -> None:
    """An api_keys table as the previous release made it gains expires_at and
    last_used_at; its keys never expire; an expired key belongs to no org."""
    from datetime import timedelta

    async def go() -> None:
        c = await asyncpg.connect(settings.pg_dsn)
        try:
            await c.execute(
                "CREATE TABLE organizations (id text PRIMARY KEY, name text NOT NULL, "
                "industry text, plan_type text NOT NULL DEFAULT 'standard', settings jsonb "
                "NOT NULL DEFAULT '{}'::jsonb, created_at timestamptz NOT NULL DEFAULT now(), "
                "updated_at timestamptz NOT NULL DEFAULT now());"
                "CREATE TABLE api_keys (id text PRIMARY KEY, org_id text NOT NULL REFERENCES "
                "organizations (id), key_hash bytea NOT NULL UNIQUE, name text, created_at "
                "timestamptz NOT NULL DEFAULT now(), revoked_at timestamptz);"
                "INSERT INTO organizations (id, name) VALUES ('old', 'Old');"
            )
            old_key = tenancy.generate_key()
            await c.execute(
                "INSERT INTO api_keys (id, org_id, key_hash) VALUES ('key_old', 'old', $1)",
                tenancy.hash_key(old_key),
            )
            await tenancy.ensure_schema(c)
            assert await tenancy.org_for_key(c, old_key) == "old"
            (info,) = await tenancy.list_api_keys(c, "old")
            assert info.expires_at is None and info.last_used_at is None
            key_id, key = await tenancy.create_api_key(c, "old", expires_in=timedelta(hours=1))
            assert await tenancy.org_for_key(c, key) == "old"
            await c.execute(
                "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1",
                key_id,
            )
            assert await tenancy.org_for_key(c, key) is None
            record = await tenancy.lookup_key(c, key)
            assert record is not None and record.expired and not record.active
        finally:
            await c.close()

    asyncio.run(go())
