"""`leadscore webhooks add|list|remove|deliveries|retry`: per-org webhooks and their deliveries.

The worker's dispatcher (streams/webhook_dispatcher.py) sends; these commands only manage the
tables it reads.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, TypeVar

import psycopg
import typer
from rich.console import Console
from rich.table import Table

from adapters import webhooks
from adapters.settings import get_settings
from adapters.webhook_http import UrlRefusedError, check_url
from adapters.webhook_secrets import SecretBox, SecretKeyError

T = TypeVar("T")

app = typer.Typer(
    help="Per-org webhooks of lead.qualified, lead.disqualified, lead.grade_changed.",
    no_args_is_help=True,
)
console = Console() if sys.stdout.isatty() else Console(width=160)


def _box(required: bool) -> SecretBox | None:
    try:
        return SecretBox.from_settings(get_settings())
    except SecretKeyError as exc:
        if not required:
            return None  # reading the tables needs no key
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc


def _run(action: Callable[[psycopg.Connection[Any]], T], box: SecretBox | None = None) -> T:
    dsn = get_settings().pg_dsn
    try:
        # With the key known, secrets stored before encryption are sealed now.
        webhooks.ensure_schema(dsn, box or _box(required=False))
    except SecretKeyError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            return action(conn)
    except webhooks.WebhookError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc


def _when(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S}" if value else ""


@app.command()
def add(
    org: Annotated[str, typer.Option(help="The org whose events it receives")],
    url: Annotated[
        str,
        typer.Option(help="https URL to POST to; it must resolve to public addresses only"),
    ],
    events: Annotated[
        str | None,
        typer.Option(help="Comma-separated event types (default: all three typed events)"),
    ] = None,
) -> None:
    """Add a webhook; it receives events stored from now on. Prints its secret once."""
    from adapters.eventstore import open_store

    settings = get_settings()
    box = _box(required=True)
    assert box is not None
    policy = webhooks.policy_from_settings(settings)
    try:  # refused before anything touches the database (add_webhook checks it again)
        check_url(url, policy)
    except UrlRefusedError as exc:
        console.print(f"[red]error:[/red] {exc}: {url[:200]!r}")
        raise typer.Exit(1) from exc

    try:
        types = webhooks.parse_event_types(events)
    except webhooks.WebhookError as exc:
        raise typer.BadParameter(str(exc)) from exc
    store = open_store(get_settings().pg_dsn, cache_size=0)
    try:
        head = store.max_position()
    finally:
        store.close()
    hook, secret = _run(
        lambda c: webhooks.add_webhook(c, org, url, types, head, policy=policy, box=box), box
    )
    console.print(
        f"webhook {hook.id} for {org}: {', '.join(hook.event_types)} -> {hook.url}\n"
        "Standard Webhooks signing secret (store it now, it is not shown again):"
    )
    # Plain print: rich could wrap or style it, and scripts read the last line.
    print(secret, flush=True)


@app.command("list")
def list_(
    org: Annotated[str | None, typer.Option(help="Only this org's webhooks")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Also removed webhooks")] = False,
) -> None:
    """The webhooks (never their secrets)."""
    hooks = _run(lambda c: webhooks.list_webhooks(c, org, include_removed=all_))
    table = Table("id", "org", "url", "events", "active", "created", title="webhooks")
    for h in hooks:
        table.add_row(
            str(h.id),
            h.org_id,
            h.url,
            ", ".join(h.event_types),
            "yes" if h.active else "no",
            _when(h.created_at),
        )
    console.print(table)


@app.command()
def remove(webhook_id: Annotated[int, typer.Argument(help="Webhook id")]) -> None:
    """Stop a webhook; its pending deliveries become dead (its history stays listed)."""
    n = _run(lambda c: webhooks.remove_webhook(c, webhook_id))
    console.print(f"removed webhook {webhook_id}; {n} pending deliveries marked dead")


@app.command()
def deliveries(
    org: Annotated[str | None, typer.Option(help="Only this org's deliveries")] = None,
    status: Annotated[
        str | None, typer.Option(help="pending, delivered or dead (dead = the dead letters)")
    ] = None,
    limit: Annotated[int, typer.Option(help="The newest N")] = 100,
) -> None:
    """Deliveries, newest first: status, attempts, the receiver's last answer."""
    if status is not None and status not in webhooks.STATUSES:
        raise typer.BadParameter(f"--status must be one of {', '.join(webhooks.STATUSES)}")
    rows = _run(lambda c: webhooks.list_deliveries(c, org, status, limit))
    table = Table(
        "id", "org", "webhook", "event type", "event id", "status", "attempts",
        "last status", "last error", "next attempt", "delivered",
        title=f"webhook deliveries ({len(rows)} shown)",
    )  # fmt: skip
    for r in rows:
        table.add_row(
            str(r["id"]),
            r["org_id"],
            f"{r['webhook_id']} {r['url']}",
            r["event_type"],
            r["event_id"],
            r["status"],
            str(r["attempts"]),
            str(r["last_status"] or ""),
            r["last_error"] or "",
            _when(r["next_attempt_at"]),
            _when(r["delivered_at"]),
        )
    console.print(table)


@app.command()
def retry(delivery_id: Annotated[int, typer.Argument(help="A dead delivery's id")]) -> None:
    """Send a dead delivery again: back to pending, due now, attempts reset."""
    _run(lambda c: webhooks.retry_delivery(c, delivery_id))
    console.print(f"delivery {delivery_id} is pending again")


@app.command("rotate-key")
def rotate_key() -> None:
    """Re-encrypt every stored secret under the first key of LEADSCORE_WEBHOOK_SECRET_KEY
    (put the new key first, the old one after it; drop the old one once this ran)."""
    box = _box(required=True)
    assert box is not None
    n = _run(lambda c: webhooks.rotate_secrets(c, box), box)
    console.print(f"{n} webhook secrets re-encrypted under the newest key")
