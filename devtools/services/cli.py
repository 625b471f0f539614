"""`leadscore services up|down|status`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from adapters.settings import get_settings
from devtools.services import stack
from devtools.services.status import EXTERNAL, STARTED_BY_US, ServiceError, ServiceStatus

app = typer.Typer(
    help="Local Kafka (KRaft), PostgreSQL and Redis under the run dir, for development and tests.",
    no_args_is_help=True,
)

Only = Annotated[
    list[str] | None,
    typer.Option("--only", help="Limit to a service: kafka, postgres or redis (repeatable)."),
]

_err = Console(stderr=True)
_STYLE = {STARTED_BY_US: "green", EXTERNAL: "cyan"}


@app.command()
def up(only: Only = None) -> None:
    """Start the services that are not running; wait until each answers for real."""
    _guarded(lambda: stack.up(get_settings(), only, _err))


@app.command()
def down(only: Only = None) -> None:
    """Stop the services that `up` started; servers found running are left alone."""
    _guarded(lambda: stack.down(get_settings(), only, _err))


@app.command()
def status(only: Only = None) -> None:
    """Show each service's address, state, pid and data directory."""
    Console().print(_table(stack.status(get_settings(), only)))


def _table(rows: list[ServiceStatus]) -> Table:
    table = Table(title="leadscore services")
    table.add_column("service", no_wrap=True)
    table.add_column("address", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("pid", no_wrap=True, justify="right")
    table.add_column("data dir", overflow="fold")
    for row in rows:
        style = _STYLE.get(row.state, "red")
        table.add_row(
            row.name,
            row.address,
            f"[{style}]{row.state}[/]",
            "" if row.pid is None else str(row.pid),
            str(row.data_dir),
        )
    return table


def _guarded(action: Callable[[], None]) -> None:
    try:
        action()
    except ServiceError as exc:
        _err.print("[red bold]error:[/]", end=" ")
        # Plain text: the message carries log lines whose brackets are not rich markup.
        _err.print(str(exc), markup=False, highlight=False)
        raise typer.Exit(1) from exc


if __name__ == "__main__":
    app()
