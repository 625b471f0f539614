"""`leadscore leads forget|export` and `leadscore keys rotate|new`: personal data on request
(README, "Privacy")."""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console

from adapters.settings import get_settings

leads_app = typer.Typer(help="A person's data: export it, or forget it everywhere.")
keys_app = typer.Typer(help="Key-encryption keys that wrap the per-lead data keys.")
console = Console(stderr=True)


@leads_app.command()
def forget(
    org: Annotated[str, typer.Option(help="The lead's org")],
    lead: Annotated[str, typer.Option(help="The lead's id (as upstream sends it)")],
    reason: Annotated[
        str | None, typer.Option(help="Why (a ticket number; no personal data)")
    ] = None,
) -> None:
    """Destroy the lead's data key, record LeadForgotten, delete its shadow scores; the read
    models and webhook deliveries follow the log. Prints what was done as JSON."""
    from adapters.erasure import UnknownLeadError, forget_lead
    from adapters.eventstore import open_store

    s = get_settings()
    store = open_store(s.pg_dsn, cache_size=0)
    try:
        done = forget_lead(store, s.pg_dsn, org, lead, reason)
    except UnknownLeadError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    finally:
        store.close()
    sys.stdout.buffer.write(orjson.dumps(done.as_dict()) + b"\n")


@leads_app.command()
def export(
    org: Annotated[str, typer.Option(help="The lead's org")],
    lead: Annotated[str, typer.Option(help="The lead's id (as upstream sends it)")],
) -> None:
    """Everything held about the lead (profile, attributes, events, score and factors), as
    JSON on stdout."""
    found = asyncio.run(_export(org, lead))
    if found is None:
        console.print(f"[red]error:[/red] no lead {lead!r} in org {org!r}")
        raise typer.Exit(1)
    sys.stdout.buffer.write(orjson.dumps(found, option=orjson.OPT_INDENT_2) + b"\n")


async def _export(org: str, lead: str) -> dict[str, Any] | None:
    import asyncpg

    from domain.lead import lead_aggregate_id
    from projections.export import lead_export

    pool = await asyncpg.create_pool(get_settings().pg_dsn, min_size=1, max_size=2)
    try:
        return await lead_export(pool, org, lead, lead_aggregate_id(org, lead))
    finally:
        await pool.close()


@keys_app.command()
def rotate() -> None:
    """Re-wrap every lead's data key with the newest KEK (the first of LEADSCORE_KEK); after
    it, older KEKs can be removed from the setting."""
    from adapters.eventstore import open_store

    store = open_store(get_settings().pg_dsn, cache_size=0)
    try:
        done = store.keys.rotate()
    finally:
        store.close()
    console.print(f"re-wrapped {done} lead keys with KEK {store.keys.keks.newest}")


@keys_app.command()
def new() -> None:
    """Print a fresh KEK: put it first in LEADSCORE_KEK, then run `leadscore keys rotate`."""
    from adapters.lead_keys import new_kek

    print(new_kek(), flush=True)


def register(app: typer.Typer) -> None:
    app.add_typer(leads_app, name="leads")
    app.add_typer(keys_app, name="keys")
