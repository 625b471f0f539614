"""The proof of erasure (issue 17): a forgotten person's data is nowhere any more.

Leads with distinctive personal data go through the real engine; one is exported, then
forgotten through the API (admin key); every projection is rebuilt from position 0 and
the store is replayed; then PostgreSQL's table files (after CHECKPOINT and VACUUM FULL),
Redis's files, the ClickHouse data directory, the read models and every log the test
stack wrote are searched for the person's bytes: none, while the other leads keep their
data and their scores.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
import redis as redis_sync

from adapters import tenancy
from adapters.eventstore import open_store
from adapters.logs import lead_hash
from adapters.settings import Settings
from devtools.services.postgres import _admin_dsn, layout
from domain.events import ActivityKind, EventType, LeadEvent
from domain.lead import lead_aggregate_id
from projections.base import ProjectionRunner
from projections.clickhouse import ClickHouseProjection, connect
from projections.postgres import PostgresProjection
from projections.redis import RedisProjection
from streams.bootstrap import bootstrap
from streams.codec import event_to_record
from streams.wire import LEAD_EVENT_SCHEMA_V3, AvroTopic
from tests.support.api import request, start_api, stop_api, wait_ready
from tests.support.factories import T0, FixedScorer, activity, next_id
from tests.support.net import free_port

pytestmark = pytest.mark.e2e

ORG = "org-privacy"


def person(tag: str, i: int) -> dict[str, str]:
    """Personal data no other test or fixture could hold."""
    return {
        "email": f"xq{tag}{i}@erase-me.example",
        "first_name": f"Qwyneth{tag}{i}",
        "last_name": f"Vlorbex{tag}{i}",
        "company": f"Zorblax{tag}{i} GmbH",
        "title": f"Chief Zyx{tag}{i} Officer",
    }


def lead_events(tag: str, n: int) -> list[LeadEvent]:
    events: list[LeadEvent] = []
    for i in range(n):
        lead = f"lead-{tag}-{i}"
        profile = {**person(tag, i), "employees": 500 + i, "country": "DE", "source": "webinar"}
        events.append(
            LeadEvent(
                next_id(),
                EventType.LEAD_CREATED,
                ORG,
                lead,
                T0,
                profile,  # type: ignore[arg-type]
                attributes={"phone": f"+99{tag}{i}77"},
            )  # fmt: skip
        )
        events.append(activity(ActivityKind.DEMO_REQUEST, lead=lead, org=ORG))
        events.append(activity(ActivityKind.PRICING_PAGE, lead=lead, org=ORG))
    return events


def store_v3(settings: Settings, events: list[LeadEvent]) -> None:
    """Through the real processor, encoded as lead_event v3 (the one with attributes)."""
    engine = bootstrap(settings, scorer=FixedScorer())
    try:
        enc = AvroTopic(engine.catalog, settings.topic_lead_events, LEAD_EVENT_SCHEMA_V3)
        for i in range(0, len(events), 5):
            engine.processor.process([enc.encode(event_to_record(e)) for e in events[i : i + 5]])
    finally:
        engine.close()


async def rebuild(settings: Settings) -> None:
    """`leadscore projections rebuild` for PostgreSQL and Redis: reset, then from 0."""
    pool = await asyncpg.create_pool(settings.pg_dsn, min_size=1, max_size=4)
    client = redis_sync.asyncio.from_url(settings.redis_url)
    try:
        runner = ProjectionRunner(pool, [])
        for projection in (
            PostgresProjection(pool),
            RedisProjection(client, settings.redis_prefix),
        ):
            await projection.reset()
            await projection.setup()
            await runner.catch_up(projection)
    finally:
        await client.aclose()
        await pool.close()


async def rebuild_clickhouse(settings: Settings) -> list[tuple[Any, ...]]:
    pool = await asyncpg.create_pool(settings.pg_dsn, min_size=1, max_size=2)
    client = connect(settings.clickhouse_dsn)
    try:
        ch = ClickHouseProjection(client)
        await ch.reset()
        await ch.setup()
        await ProjectionRunner(pool, []).catch_up(ch)
        for table in ("lead_events", "score_history"):
            client.command(f"OPTIMIZE TABLE {table} FINAL")
        return list(
            client.query(
                "SELECT lead_id, title FROM lead_events WHERE kind = 'LeadCreated' ORDER BY lead_id"
            ).result_rows
        )
    finally:
        client.close()
        await pool.close()


async def pg_rows(settings: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    conn = await asyncpg.connect(settings.pg_dsn)
    try:
        leads = {r["lead_id"]: dict(r) for r in await conn.fetch("SELECT * FROM leads")}
        scores = {
            r["lead_id"]: (r["total"], r["grade"])
            for r in await conn.fetch("SELECT lead_id, total, grade FROM lead_scores")
        }
        return leads, scores
    finally:
        await conn.close()


async def vacuum(settings: Settings) -> Path:
    """CHECKPOINT, VACUUM FULL every table; the database's directory of files."""
    conn = await asyncpg.connect(settings.pg_dsn)
    try:
        await conn.execute("VACUUM FULL")
        oid = await conn.fetchval("SELECT oid FROM pg_database WHERE datname = current_database()")
    finally:
        await conn.close()
    # CHECKPOINT takes a superuser (or pg_checkpoint): the dev cluster's, on its socket.
    with psycopg.connect(_admin_dsn(settings), autocommit=True) as su:
        su.execute("CHECKPOINT")
    return layout(settings).data / "base" / str(oid)


def files_holding(root: Path, needles: list[bytes]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        for needle in needles:
            if needle in data:
                found.setdefault(needle.decode(), []).append(str(path))
    return found


def test_a_forgotten_person_is_gone_everywhere_and_the_others_are_intact(
    settings: Settings, tmp_path: Path
) -> None:
    tag = secrets.token_hex(3)
    settings = dataclasses.replace(settings, api_port=free_port())
    conn_keys = asyncio.run(_tenants(settings))
    store_v3(settings, lead_events(tag, 4))
    victim, others = f"lead-{tag}-1", [f"lead-{tag}-{i}" for i in (0, 2, 3)]
    secrets_of_victim = [*person(tag, 1).values(), f"+99{tag}177"]
    asyncio.run(rebuild(settings))
    leads_before, scores_before = asyncio.run(pg_rows(settings))
    assert leads_before[victim]["email"] == person(tag, 1)["email"]

    api_log = tmp_path / "api.log"
    process = start_api(settings, api_log)
    try:
        wait_ready(settings.api_port, process, api_log)
        plain = {"Authorization": f"Bearer {conn_keys['plain']}"}
        admin = {"Authorization": f"Bearer {conn_keys['admin']}"}
        # The right of access: everything, decrypted.
        exported = request(settings.api_port, "GET", f"/leads/{victim}/export", plain)
        assert exported.status == 200, exported.body
        assert exported.body["profile"]["email"] == person(tag, 1)["email"]
        assert exported.body["attributes"] == {"phone": f"+99{tag}177"}
        assert exported.body["forgotten"] is None
        assert [e["kind"] for e in exported.body["events"]][:1] == ["LeadCreated"]
        # A refused key's request is logged, with the path's lead id hashed.
        unknown = {"Authorization": "Bearer " + tenancy.generate_key()}
        refused = request(settings.api_port, "GET", f"/leads/{victim}", unknown)
        assert refused.status == 401
        # Erasure needs the admin scope.
        denied = request(settings.api_port, "DELETE", f"/leads/{victim}?reason=T-1", plain)
        assert denied.status == 403, denied.body
        done = request(settings.api_port, "DELETE", f"/leads/{victim}?reason=T-1", admin)
        assert done.status == 200, done.body
        assert done.body["key_destroyed"] is True
        again = request(settings.api_port, "DELETE", f"/leads/{victim}", admin)
        assert again.status == 200 and again.body["already_forgotten"] is True
        missing = request(settings.api_port, "DELETE", f"/leads/no-such-{tag}", admin)
        assert missing.status == 404
        after = request(settings.api_port, "GET", f"/leads/{victim}/export", plain)
        assert after.status == 200
        assert after.body["forgotten"]["reason"] == "T-1"
        assert "email" not in after.body["profile"] and after.body["attributes"] == {}
        assert not any(s.encode() in after.raw for s in secrets_of_victim)
    finally:
        stop_api(process)

    # Rebuild every projection from 0, and replay the store.
    asyncio.run(rebuild(settings))
    ch_rows = asyncio.run(rebuild_clickhouse(settings))
    store = open_store(settings.pg_dsn, cache_size=0)
    try:
        ids = [lead_aggregate_id(ORG, lead) for lead in [victim, *others]]
        replayed = store.load(ids)
    finally:
        store.close()
    gone = replayed[lead_aggregate_id(ORG, victim)]
    assert gone is not None and gone.forgotten
    assert not set(gone.profile) & {"email", "first_name", "last_name", "company", "title"}
    for i, lead in zip((0, 2, 3), others, strict=True):
        kept = replayed[lead_aggregate_id(ORG, lead)]
        assert kept is not None and kept.profile["email"] == person(tag, i)["email"]

    leads_after, scores_after = asyncio.run(pg_rows(settings))
    for column in ("email", "first_name", "last_name", "company", "title"):
        assert leads_after[victim][column] is None
    assert leads_after[victim]["country"] == "DE"  # not personal: kept
    for lead in others:
        assert leads_after[lead] == leads_before[lead]
    assert scores_after == scores_before  # nobody's score moved, the victim's included
    assert dict(ch_rows)[victim] is None
    assert dict(ch_rows)[others[0]] == person(tag, 0)["title"]

    # The bytes: PostgreSQL's files, Redis's, ClickHouse's, and every log.
    needles = [s.encode() for s in secrets_of_victim]
    pg_dir = asyncio.run(vacuum(settings))
    assert files_holding(pg_dir, needles) == {}
    # The search does find what is there: another lead's email in the read model's table.
    other_email = person(tag, 0)["email"].encode()
    assert files_holding(pg_dir, [other_email]) != {}
    r = redis_sync.Redis.from_url(settings.redis_url)
    try:
        r.save()
        redis_dir = Path(r.config_get("dir")["dir"])
    finally:
        r.close()
    assert files_holding(redis_dir, needles) == {}
    assert files_holding(Path(settings.clickhouse_dsn.removeprefix("chdb://")), needles) == {}
    logs = [api_log, layout(settings).log, settings.run_path / "redis" / "log"]
    for log in logs:
        root = log if log.is_dir() else log.parent
        assert files_holding(root, [*needles, victim.encode()]) == {}, log
    assert lead_hash(victim).encode() in api_log.read_bytes()  # it was logged, hashed


async def _tenants(settings: Settings) -> dict[str, str]:
    conn = await asyncpg.connect(settings.pg_dsn)
    try:
        await tenancy.ensure_schema(conn)
        await tenancy.create_org(conn, ORG, "Privacy test org")
        plain = (await tenancy.create_api_key(conn, ORG, "reads"))[1]
        admin = (await tenancy.create_api_key(conn, ORG, "erasure", admin=True))[1]
        return {"plain": plain, "admin": admin}
    finally:
        await conn.close()
