"""`leadscore projections status|rebuild|run|quarantine list|quarantine retry`."""

from __future__ import annotations

import asyncio
import signal
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from adapters.gc_settle import settle_gc
from adapters.settings import Settings, get_settings
from projections import quarantine as quarantined
from projections.base import ProjectionBusyError, ProjectionRunner
from projections.log import LogReader, table_exists
from projections.runner import ALL, embedded_clickhouse, opened, run_projections

app = typer.Typer(help="Read models: positions, rebuilds, running them.", no_args_is_help=True)
console = Console()

Names = Annotated[
    list[str] | None, typer.Argument(help=f"Projections ({', '.join(ALL)}); default: all")
]


def _names(settings: Settings, names: list[str] | None) -> list[str]:
    chosen = list(names or ALL)
    unknown = set(chosen) - set(ALL)
    if unknown:
        raise typer.BadParameter(f"unknown projection(s) {sorted(unknown)}; known: {ALL}")
    return chosen


@app.command()
def status() -> None:
    """Each projection's position in the event store's log and how far it lags."""
    s = get_settings()
    rows = asyncio.run(_status(s))
    table = Table("projection", "position", "log head", "lag", "where")
    for r in rows:
        table.add_row(
            r["name"], f"{r['position']:,}", f"{r['head']:,}", f"{r['lag']:,}", r["where"]
        )
    console.print(table)


async def _status(s: Settings) -> list[dict[str, object]]:
    # An embedded chdb directory is owned by the API process: read what it reported.
    direct = [n for n in ALL if not (n == "clickhouse" and embedded_clickhouse(s))]
    async with opened(s, direct) as (pool, projections):
        rows = await ProjectionRunner(pool, projections).status()
        for r in rows:
            r["where"] = _where(s, str(r["name"]))
        if len(direct) < len(ALL):
            head = await LogReader(pool).head() if await table_exists(pool) else 0
            reported = (
                await pool.fetchval(
                    "SELECT position FROM projection_status WHERE name = 'clickhouse'"
                )
                if await pool.fetchval("SELECT to_regclass('projection_status') IS NOT NULL")
                else None
            )
            position = int(reported or 0)
            rows.append(
                {"name": "clickhouse", "position": position, "head": head,
                 "lag": head - position, "where": _where(s, "clickhouse") + " (as reported)"}
            )  # fmt: skip
    return rows


def _where(s: Settings, name: str) -> str:
    if name == "postgres":
        return s.pg_dsn.rsplit("@", 1)[-1]
    if name == "redis":
        return f"{s.redis_url.rsplit('@', 1)[-1]} prefix {s.redis_prefix}"
    return s.clickhouse_dsn


@app.command()
def rebuild(names: Names = None) -> None:
    """Drop read models and rebuild them from position 0 of the event store's log."""
    s = get_settings()
    try:
        asyncio.run(_rebuild(s, _names(s, names)))
    except ProjectionBusyError as exc:
        console.print(f"[red]{exc}")
        raise typer.Exit(1) from exc


async def _rebuild(s: Settings, names: list[str]) -> None:
    async with opened(s, names) as (pool, projections):
        runner = ProjectionRunner(pool, projections)
        head = await runner.reader.head() if await table_exists(pool) else 0
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeRemainingColumn(), console=console,
        ) as progress:  # fmt: skip
            for p in projections:
                task = progress.add_task(f"rebuilding {p.name}", total=head)
                n = await runner.rebuild(p, lambda pos, t=task: progress.update(t, completed=pos))
                progress.update(task, completed=head)
                console.print(f"{p.name}: {n:,} log entries replayed")


@app.command()
def run(names: Names = None) -> None:
    """Run projections in the foreground until interrupted (workers run them too)."""
    s = get_settings()
    chosen = _names(s, names)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        console.print(f"running projections {', '.join(chosen)}; Ctrl-C stops")
        await run_projections(s, chosen, stop)

    settle_gc()
    asyncio.run(main())


quarantine_app = typer.Typer(
    help="Log entries a read model could not write and set aside.", no_args_is_help=True
)
app.add_typer(quarantine_app, name="quarantine")


@quarantine_app.command("list")
def quarantine_list(names: Names = None) -> None:
    """The entries set aside, by projection and log position, with the sink's reason."""
    s = get_settings()
    chosen = set(_names(s, names))
    rows = asyncio.run(_quarantined(s))
    table = Table("projection", "position", "kind", "org", "attempts", "since", "reason")
    for q in rows:
        if q.projection in chosen:
            table.add_row(
                q.projection, str(q.position), q.kind, q.org_id, str(q.attempts),
                q.quarantined_at.isoformat(timespec="seconds"), q.reason,
            )  # fmt: skip
    console.print(table)


async def _quarantined(s: Settings) -> list[quarantined.Quarantined]:
    import asyncpg

    pool = await asyncpg.create_pool(s.pg_dsn, min_size=1, max_size=2)
    try:
        return await quarantined.entries(pool)
    finally:
        await pool.close()


@quarantine_app.command("retry")
def quarantine_retry(names: Names = None) -> None:
    """Write the entries set aside again (after a fix); those written are released."""
    s = get_settings()
    released, kept = asyncio.run(retry_quarantined(s, _names(s, names)))
    console.print(f"released {released}, still quarantined {kept}")
    if kept:
        raise typer.Exit(1)


async def retry_quarantined(s: Settings, names: list[str]) -> tuple[int, int]:
    """Re-drive each named projection's quarantined entries; (released, still refused)."""
    released = kept = 0
    async with opened(s, names) as (pool, projections):
        reader = LogReader(pool)
        for p in projections:
            await p.setup()
            rows = await quarantined.entries(pool, p.name)
            for entry in await reader.at([q.position for q in rows]):
                try:
                    await p.reapply([entry])
                except Exception as exc:
                    await quarantined.failed_again(pool, p.name, entry.position, exc)
                    kept += 1
                    continue
                await quarantined.release(pool, p.name, entry.position)
                released += 1
    return released, kept
