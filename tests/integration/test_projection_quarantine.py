"""A log entry a read model cannot write is quarantined and the projection moves on;
`projections quarantine retry` re-drives it after a fix; a ClickHouse backfill spanning
2000..now goes in one insert (issue 15, item 2 and the partitions bullet)."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from adapters.settings import Settings
from domain.events import LeadEvent
from domain.lead import lead_aggregate_id
from leadscore.cli_projections import retry_quarantined
from projections import quarantine
from projections.base import ProjectionRunner, SinkUnavailableError
from projections.clickhouse import ClickHouseProjection, connect
from projections.log import LogReader
from projections.postgres import PostgresProjection
from projections.redis import RedisProjection
from streams.bootstrap import bootstrap
from streams.processor import BatchStats
from tests.support.factories import T0, created

pytestmark = pytest.mark.integration

ORG = "org-q"


def store_unvalidated(settings: Settings, events: list[LeadEvent]) -> None:
    """Store events as an engine before today's validation did (the log may hold them)."""
    engine = bootstrap(settings)
    try:
        engine.processor._apply(events, BatchStats())
    finally:
        engine.close()


def counter(name: str, projection: str) -> float:
    return REGISTRY.get_sample_value(name, {"projection": projection}) or 0.0


async def project_all(settings: Settings, chdb: Path) -> dict[str, object]:
    pool = await asyncpg.create_pool(settings.pg_dsn, min_size=1, max_size=4)
    client = aioredis.from_url(settings.redis_url)
    ch = connect(f"chdb://{chdb}")
    try:
        projections = [
            PostgresProjection(pool),
            RedisProjection(client, settings.redis_prefix),
            ClickHouseProjection(ch),
        ]
        runner = ProjectionRunner(pool, projections)
        for p in projections:
            await p.setup()
            await runner.catch_up(p)
        head = await LogReader(pool).head()
        return {
            "head": head,
            "positions": {p.name: await p.position() for p in projections},
            "leads": {
                r["lead_id"]: (r["title"], r["employees"])
                for r in await pool.fetch("SELECT lead_id, title, employees FROM leads")
            },
            "scored": {r[0] for r in await pool.fetch("SELECT lead_id FROM lead_scores")},
            "redis": {
                lead: await client.hget(f"{settings.redis_prefix}:{ORG}:lead:{lead}", "score")
                is not None
                for lead in ("good-1", "nul-title", "big-size", "good-2")
            },
            "ch_leads": {
                r[0]
                for r in ch.query(
                    "SELECT lead_id FROM lead_events WHERE kind = 'LeadCreated'"
                ).result_rows
            },
            "quarantined": [
                (q.projection, q.kind, q.org_id, q.error_type, q.reason)
                for q in await quarantine.entries(pool)
            ],
            "lag": REGISTRY.get_sample_value(
                "leadscore_projection_lag_positions", {"projection": "postgres"}
            ),
        }
    finally:
        ch.close()
        await client.aclose()
        await pool.close()


def test_poisoned_entries_are_quarantined_and_retried_after_a_fix(
    settings: Settings, tmp_path: Path
) -> None:
    s = dataclasses.replace(settings, require_registered_org=False)
    events = [
        created("good-1", ORG, T0),
        created("nul-title", ORG, T0, title="CEO\x00", employees=50),
        created("big-size", ORG, T0, title="CTO", employees=2**40),  # > PostgreSQL integer
        created("good-2", ORG, T0),
    ]
    store_unvalidated(s, events)
    before = {
        n: counter("leadscore_projection_quarantined_total", n) for n in ("postgres", "clickhouse")
    }

    got = asyncio.run(project_all(s, tmp_path / "chdb"))

    # Every projection reached the head: nothing stopped behind the poisoned entries.
    assert got["positions"] == dict.fromkeys(("postgres", "redis", "clickhouse"), got["head"])
    assert got["lag"] == 0
    # The writable entries are in every read model, the refused ones in none.
    assert set(got["leads"]) == {"good-1", "good-2"}
    assert got["scored"] == {"good-1", "nul-title", "big-size", "good-2"}
    assert all(got["redis"].values())
    # ClickHouse (String, Int64) holds both: only PostgreSQL refuses them.
    assert got["ch_leads"] == {"good-1", "nul-title", "big-size", "good-2"}
    q = sorted(got["quarantined"])
    assert [(p, k, o) for p, k, o, _t, _r in q] == [("postgres", "LeadCreated", ORG)] * 2
    reasons = " | ".join(r for *_x, r in q)
    assert "0x00" in reasons and "int32" in reasons
    assert str(2**40) not in reasons  # the refused value is not echoed
    assert counter("leadscore_projection_quarantined_total", "postgres") == before["postgres"] + 2
    assert counter("leadscore_projection_quarantined_total", "clickhouse") == before["clickhouse"]

    # The fix for sizes: a wider column. Retry writes what now fits; the NUL stays out.
    async def widen() -> None:
        conn = await asyncpg.connect(s.pg_dsn)
        try:
            await conn.execute("ALTER TABLE leads ALTER COLUMN employees TYPE bigint")
        finally:
            await conn.close()

    asyncio.run(widen())
    s_ch = dataclasses.replace(s, clickhouse_dsn=f"chdb://{tmp_path / 'chdb'}")
    released, kept = asyncio.run(retry_quarantined(s_ch, ["postgres"]))
    assert (released, kept) == (1, 1)  # big-size written; the NUL is still refused

    async def after() -> tuple[object, object]:
        pool = await asyncpg.create_pool(s.pg_dsn, min_size=1, max_size=2)
        try:
            rows = await pool.fetch("SELECT lead_id, employees FROM leads ORDER BY lead_id")
            left = [(x.projection, x.attempts) for x in await quarantine.entries(pool)]
            return [tuple(r) for r in rows], sorted(left)
        finally:
            await pool.close()

    leads, left = asyncio.run(after())
    assert ("big-size", 2**40) in leads and len(leads) == 3
    assert left == [("postgres", 2)]


def test_a_backfill_spanning_2000_to_now_is_one_clickhouse_insert(
    settings: Settings, tmp_path: Path
) -> None:
    s = dataclasses.replace(settings, require_registered_org=False)
    start = datetime(2000, 1, 1, tzinfo=UTC)
    now = datetime.now(UTC)
    months = (now.year - 2000) * 12 + now.month
    assert months > 300
    events = [
        created(f"lead-{i:04d}", ORG, start + timedelta(days=30 * i)) for i in range(months - 1)
    ]
    store_unvalidated(s, events)

    async def run() -> tuple[int, int, int, list[object]]:
        pool = await asyncpg.create_pool(s.pg_dsn, min_size=1, max_size=2)
        ch = connect(f"chdb://{tmp_path / 'chdb'}")
        try:
            p = ClickHouseProjection(ch)
            await p.setup()
            # One batch: every entry in one insert per table.
            runner = ProjectionRunner(pool, [p], batch_size=10_000)
            await runner.catch_up(p, batches=1)
            head = await LogReader(pool).head()
            n = ch.query("SELECT count() FROM lead_events").result_rows[0][0]
            parts = ch.query(
                "SELECT count(DISTINCT partition) FROM system.parts "
                "WHERE database = currentDatabase() AND table = 'lead_events' AND active"
            ).result_rows[0][0]
            left = await quarantine.entries(pool)
            return await p.position(), head, n, [n, parts, left]
        finally:
            ch.close()
            await pool.close()

    position, head, n, (_n, partitions, left) = asyncio.run(run())
    assert position == head
    assert n == months - 1
    assert left == []
    assert partitions <= now.year - 2000 + 1


def test_a_store_refusing_every_entry_is_retried_not_quarantined(settings: Settings) -> None:
    """Every entry refused (a constraint on the position row, a read-only database): the
    store is at fault; nothing is quarantined, the position stays, and once the store is
    fixed the same batch goes in."""
    s = dataclasses.replace(settings, require_registered_org=False)
    store_unvalidated(s, [created(f"lead-{i}", ORG, T0) for i in range(3)])
    dbname = s.pg_dsn.rsplit("/", 1)[-1]

    async def run() -> None:
        pool = await asyncpg.create_pool(s.pg_dsn, min_size=1, max_size=4)
        try:
            p = PostgresProjection(pool)
            await p.setup()
            runner = ProjectionRunner(pool, [p])
            # A data-class error on every write: each entry fails alone too.
            await pool.execute(
                "ALTER TABLE tracking ADD CONSTRAINT refuse_all "
                "CHECK (name <> 'projection:postgres' OR position < 0) NOT VALID"
            )
            with pytest.raises(SinkUnavailableError):
                await runner.catch_up(p)
            assert await p.position() == 0
            assert await quarantine.entries(pool) == []
            await pool.execute("ALTER TABLE tracking DROP CONSTRAINT refuse_all")
        finally:
            await pool.close()

        # A read-only database (SQLSTATE 25006) is not about the entries either.
        admin = await asyncpg.connect(s.pg_dsn)
        await admin.execute(f'ALTER DATABASE "{dbname}" SET default_transaction_read_only = on')
        await admin.close()
        pool = await asyncpg.create_pool(s.pg_dsn, min_size=1, max_size=4)
        try:
            p = PostgresProjection(pool)
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                await ProjectionRunner(pool, [p]).catch_up(p)
            assert await quarantine.entries(pool) == []
            writable = await asyncpg.connect(
                s.pg_dsn, server_settings={"default_transaction_read_only": "off"}
            )
            await writable.execute(
                f'ALTER DATABASE "{dbname}" SET default_transaction_read_only = off'
            )
            await writable.close()
        finally:
            await pool.close()
        pool = await asyncpg.create_pool(s.pg_dsn, min_size=1, max_size=4)
        try:
            p = PostgresProjection(pool)
            runner = ProjectionRunner(pool, [p])
            await runner.catch_up(p)
            assert await p.position() == await LogReader(pool).head()
            assert await pool.fetchval("SELECT count(*) FROM leads") == 3
        finally:
            await pool.close()

    asyncio.run(run())


def test_quarantine_list_shows_the_entries_set_aside(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console
    from typer.testing import CliRunner

    from adapters.settings import get_settings, settings_env
    from leadscore import cli_projections

    s = dataclasses.replace(settings, require_registered_org=False)
    store_unvalidated(s, [created("nul-title", ORG, T0, title="CEO\x00")])
    asyncio.run(project_all(s, tmp_path / "chdb"))
    for key, value in settings_env(s).items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    monkeypatch.setattr(cli_projections, "console", Console(width=250))
    try:
        out = CliRunner().invoke(
            cli_projections.app, ["quarantine", "list"], catch_exceptions=False
        )
        assert out.exit_code == 0
        assert "postgres" in out.output and "LeadCreated" in out.output and "0x00" in out.output
        retry = CliRunner().invoke(cli_projections.app, ["quarantine", "retry", "postgres"])
        assert retry.exit_code == 1
        assert "released 0, still quarantined 1" in retry.output
    finally:
        get_settings.cache_clear()


def test_a_refused_batch_is_halved_to_find_its_bad_entry(settings: Settings) -> None:
    """One entry of 128 that PostgreSQL refuses is found by halving the batch: about
    2·log2(128) writes, not one per entry, and every other entry is written."""
    s = dataclasses.replace(settings, require_registered_org=False)
    events = [created(f"lead-{i:02d}", ORG, T0) for i in range(64)]
    events[41] = created("lead-41", ORG, T0, title="CEO\x00")
    store_unvalidated(s, events)

    class Counting(PostgresProjection):
        writes = 0

        async def project(self, entries):  # type: ignore[no-untyped-def]
            Counting.writes += 1
            await super().project(entries)

    async def run() -> tuple[set[str], list[object], int, int]:
        pool = await asyncpg.create_pool(s.pg_dsn, min_size=1, max_size=4)
        try:
            p = Counting(pool)
            await p.setup()
            runner = ProjectionRunner(pool, [p])
            assert runner.size_for(p) >= 64  # one batch
            await runner.catch_up(p, batches=1)
            leads = {r[0] for r in await pool.fetch("SELECT lead_id FROM leads")}
            quarantined = [q.aggregate_id for q in await quarantine.entries(pool)]
            return leads, quarantined, await p.position(), await LogReader(pool).head()
        finally:
            await pool.close()

    leads, quarantined, position, head = asyncio.run(run())
    assert quarantined == [lead_aggregate_id(ORG, "lead-41")]
    assert leads == {f"lead-{i:02d}" for i in range(64)} - {"lead-41"}
    assert position == head
    # The batch (a LeadCreated and a LeadScored per lead), then two halves per level;
    # entry by entry would have been one write per entry.
    assert head == 128
    assert Counting.writes == 1 + 2 * 7


def test_each_projection_reads_its_own_batch_size_unless_the_runner_sets_one(
    settings: Settings, tmp_path: Path
) -> None:
    """ClickHouse pays a fixed cost per insert, so it reads 20,000 entries per write
    behind the head; PostgreSQL the runner's default; a runner given a size uses it for
    all. The API's wrapper passes the projection's size on."""
    from projections.base import DEFAULT_BATCH
    from query_api.projection_task import TrackedProjection

    async def run() -> tuple[int, int, int, int]:
        pool = await asyncpg.create_pool(settings.pg_dsn, min_size=1, max_size=2)
        ch = connect(f"chdb://{tmp_path / 'chdb'}")
        try:
            clickhouse, postgres = ClickHouseProjection(ch), PostgresProjection(pool)
            default, given = ProjectionRunner(pool, []), ProjectionRunner(pool, [], batch_size=7)
            return (
                default.size_for(clickhouse),
                default.size_for(TrackedProjection(clickhouse)),
                default.size_for(postgres),
                given.size_for(clickhouse),
            )
        finally:
            ch.close()
            await pool.close()

    assert asyncio.run(run()) == (20_000, 20_000, DEFAULT_BATCH, 7)


def test_the_lag_gauge_asks_for_the_head_only_after_a_full_batch(settings: Settings) -> None:
    """A full batch may have more behind it: the lag is the log's head less the position.
    A short batch reached the head as it was read: its lag is 0 with no query."""
    s = dataclasses.replace(settings, require_registered_org=False)
    store_unvalidated(s, [created(f"lag-{i}", ORG, T0) for i in range(5)])  # 10 entries

    class HeadCounting(LogReader):
        heads = 0

        async def head(self) -> int:
            HeadCounting.heads += 1
            return await super().head()

    async def run() -> list[tuple[float, int]]:
        pool = await asyncpg.create_pool(s.pg_dsn, min_size=1, max_size=4)
        try:
            p = PostgresProjection(pool)
            await p.setup()
            runner = ProjectionRunner(pool, [p], batch_size=4)
            runner.reader = HeadCounting(pool)
            seen = []
            for _ in range(3):  # 4, 4, then the last 2 entries
                await runner.catch_up(p, batches=1)
                lag = counter("leadscore_projection_lag_positions", "postgres")
                seen.append((lag, HeadCounting.heads))
            return seen
        finally:
            await pool.close()

    assert asyncio.run(run()) == [(6.0, 1), (2.0, 2), (0.0, 2)]
