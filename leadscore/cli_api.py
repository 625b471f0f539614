"""`leadscore api`, `leadscore orgs create|list`, `leadscore apikeys create|list|revoke`.

Mounted on the main app by ``register(app)``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import asyncpg
import typer
from rich.console import Console
from rich.table import Table

from adapters import tenancy
from adapters.settings import get_settings

T = TypeVar("T")

orgs_app = typer.Typer(help="Organizations (tenants) of the query API.", no_args_is_help=True)
apikeys_app = typer.Typer(help="API keys of the query API.", no_args_is_help=True)
console = Console()


def api(
    host: Annotated[
        str | None, typer.Option(help="Bind address (default LEADSCORE_API_HOST)")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default LEADSCORE_API_PORT)")] = None,
) -> None:
    """Serve the query API (and, with embedded chDB, run the ClickHouse projection)."""
    from query_api.server import serve

    serve(get_settings(), host=host, port=port)


def _run(action: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    try:
        return asyncio.run(tenancy.with_connection(get_settings().pg_dsn, action))
    except tenancy.TenancyError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc


@orgs_app.command("create")
def orgs_create(
    org_id: Annotated[str, typer.Option("--id", help="Org id, as lead-events carry it")],
    name: Annotated[str, typer.Option(help="Display name")],
    industry: Annotated[str | None, typer.Option(help="Industry")] = None,
    plan_type: Annotated[str, typer.Option(help="Plan")] = "standard",
) -> None:
    """Register an organization."""
    org = _run(
        lambda c: tenancy.create_org(c, org_id, name, industry=industry, plan_type=plan_type)
    )
    console.print(f"created organization {org.id} ({org.name})")


@orgs_app.command("list")
def orgs_list() -> None:
    """List the organizations."""
    orgs = _run(tenancy.list_orgs)
    table = Table("id", "name", "industry", "plan", "created")
    for o in orgs:
        table.add_row(o.id, o.name, o.industry or "", o.plan_type, f"{o.created_at:%Y-%m-%d %H:%M}")
    console.print(table)


def _access(action: Callable[[], T]) -> T:
    from adapters.kafka_access import AccessError

    try:
        return action()
    except AccessError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc


def _grant_command(
    grant: Callable[..., str | None], principal: str, org: str, password_stdin: bool, done: str
) -> None:
    """A grant-* command: the org must be registered; a generated password is printed
    once, alone on the last line."""
    if org not in {o.id for o in _run(tenancy.list_orgs)}:
        console.print(f"[red]error:[/red] org {org!r} is not registered (leadscore orgs create)")
        raise typer.Exit(1)
    password = typer.get_text_stream("stdin").readline().strip() if password_stdin else None
    generated = _access(lambda: grant(get_settings(), principal, org, password=password))
    console.print(done)
    if generated is not None:
        console.print("password (shown once):")
        print(generated)


@orgs_app.command("grant-producer")
def orgs_grant_producer(
    principal: Annotated[str, typer.Argument(help="Kafka principal (SCRAM user) of the producer")],
    org: Annotated[str, typer.Option(help="Org id whose lead-events it may produce")],
    password_stdin: Annotated[
        bool, typer.Option(help="Read the principal's password from stdin (else generated)")
    ] = False,
) -> None:
    """Let a tenant's producer write lead-events of one org, to <lead-events>.org.<org>.

    The SCRAM user is made if missing (a generated password is printed once, alone on the
    last line); the broker's ACL lets it write that topic only. The gate in each worker
    forwards the org's lead-events and dead-letters others (org_not_allowed)."""
    from adapters import kafka_access

    topic = kafka_access.org_topic(get_settings().topic_lead_events, org)
    done = f"User:{principal} may produce lead-events of {org} to {topic}"
    _grant_command(kafka_access.grant_producer, principal, org, password_stdin, done)


@orgs_app.command("grant-subscriber")
def orgs_grant_subscriber(
    principal: Annotated[str, typer.Argument(help="Kafka principal (SCRAM user) of the reader")],
    org: Annotated[str, typer.Option(help="Org id whose score-events it may read")],
    password_stdin: Annotated[
        bool, typer.Option(help="Read the principal's password from stdin (else generated)")
    ] = False,
) -> None:
    """Let a tenant's subscriber read one org's score-events, from <score-events>.org.<org>.

    The relay copies the org's score-events there from then on (within 10 s); the ACLs
    let the principal read that topic only, in consumer groups named <principal>*."""
    from adapters import kafka_access

    topic = kafka_access.org_topic(get_settings().topic_score_events, org)
    done = f"User:{principal} may read score-events of {org} from {topic}"
    _grant_command(kafka_access.grant_subscriber, principal, org, password_stdin, done)


@orgs_app.command("revoke-producer")
def orgs_revoke_producer(
    principal: Annotated[str, typer.Argument(help="Kafka principal of the producer")],
    org: Annotated[str, typer.Option(help="Org id")],
) -> None:
    """Take back a producer's right to write an org's topic (its user stays)."""
    from adapters import kafka_access

    removed = _access(lambda: kafka_access.revoke_producer(get_settings(), principal, org))
    console.print(f"removed {removed} ACL(s) of User:{principal} on {org}'s topic")


@orgs_app.command("producers")
def orgs_producers() -> None:
    """The producers allowed to write each org's topic, as the broker's ACLs say."""
    from adapters import kafka_access

    grants = _access(lambda: kafka_access.producer_grants(get_settings()))
    table = Table("org", "principal", "topic")
    for g in grants:
        table.add_row(g.org_id, f"User:{g.principal}", g.topic)
    console.print(table)


@apikeys_app.command("create")
def apikeys_create(
    org: Annotated[str, typer.Option(help="Org id the key reads as")],
    name: Annotated[str | None, typer.Option(help="What the key is for")] = None,
    expires_in_days: Annotated[
        float | None, typer.Option(help="The key stops working this many days from now")
    ] = None,
    admin: Annotated[
        bool,
        typer.Option(help="May also promote the org's models in the console and erase leads"),
    ] = False,
) -> None:
    """Create an API key. The key is printed once, alone on the last line; only its hash is kept."""
    from datetime import timedelta

    lifetime = None if expires_in_days is None else timedelta(days=expires_in_days)
    key_id, key = _run(
        lambda c: tenancy.create_api_key(c, org, name, expires_in=lifetime, admin=admin)
    )
    console.print(f"API key {key_id} for {org}; store it now, it is not shown again:")
    # Plain print: rich could wrap or style it, and scripts read the last line.
    print(key, flush=True)


@apikeys_app.command("list")
def apikeys_list(
    org: Annotated[str | None, typer.Option(help="Only this org's keys")] = None,
) -> None:
    """List API keys (ids, never the keys)."""
    keys = _run(lambda c: tenancy.list_api_keys(c, org))
    table = Table("id", "org", "name", "created", "revoked", "expires", "last used")
    for k in keys:
        table.add_row(
            k.id,
            k.org_id,
            k.name or "",
            f"{k.created_at:%Y-%m-%d %H:%M}",
            f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "",
            f"{k.expires_at:%Y-%m-%d %H:%M}" if k.expires_at else "",
            f"{k.last_used_at:%Y-%m-%d %H:%M}" if k.last_used_at else "",
        )
    console.print(table)


@apikeys_app.command("revoke")
def apikeys_revoke(key_id: Annotated[str, typer.Argument(help="Key id (key_...)")]) -> None:
    """Revoke a key; running APIs stop accepting it within their key-cache TTL (30 s)."""
    if not _run(lambda c: tenancy.revoke_api_key(c, key_id)):
        console.print(f"[red]error:[/red] no active key {key_id}")
        raise typer.Exit(1)
    console.print(f"revoked {key_id}")


def register(app: typer.Typer) -> None:
    app.command()(api)
    app.add_typer(orgs_app, name="orgs")
    app.add_typer(apikeys_app, name="apikeys")
