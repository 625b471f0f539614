"""`leadscore import --org X --mapping mapping.yaml export.csv`: onboard a CRM export."""

from __future__ import annotations

import asyncio
import csv
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from adapters.settings import get_settings
from leadscore.importer import ImportReport

console = Console() if sys.stdout.isatty() else Console(width=120)


def import_export(
    export: Annotated[Path, typer.Argument(help="The CRM export: CSV, one row per lead")],
    org: Annotated[str, typer.Option(help="The org (tenant) the leads belong to")],
    mapping: Annotated[Path, typer.Option(help="YAML: which column is what (see examples/)")],
) -> None:
    """Produce a CRM export's leads as lead-events (lead_event v3), idempotently.

    Event ids are stable (org, lead id, role): a second import applies nothing twice.
    A bad row is reported and skipped.
    """
    from adapters import tenancy
    from leadscore.import_mapping import MappingError, load_mapping
    from leadscore.importer import import_csv
    from streams.producer import lead_event_encoder
    from streams.relay import kafka_producer
    from streams.wire import SchemaCatalog

    s = get_settings()
    try:
        spec = load_mapping(mapping)
    except MappingError as exc:
        console.print(f"[red]mapping refused:[/red] {exc}")
        raise typer.Exit(2) from None
    if not export.is_file():
        raise typer.BadParameter(f"{export} is not a file")
    if s.require_registered_org:
        orgs = asyncio.run(tenancy.with_connection(s.pg_dsn, tenancy.list_orgs))
        if org not in {o.id for o in orgs}:
            console.print(
                f"[red]org {org} is not registered[/red]: its lead-events would be "
                f"dead-lettered; register it first: leadscore orgs create --id {org} --name ..."
            )
            raise typer.Exit(2)
    encoder = lead_event_encoder(SchemaCatalog.from_settings(s), s.topic_lead_events)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("importing rows", total=_rows(export))
        try:
            report = import_csv(
                export,
                spec,
                org,
                kafka_producer(s.kafka),
                s.topic_lead_events,
                encoder,
                on_row=lambda n: progress.update(task, completed=n),
            )
        except MappingError as exc:
            console.print(f"[red]not imported:[/red] {exc}")
            raise typer.Exit(2) from None
    _summary(report, org, s.topic_lead_events)
    if report.delivery_failures:
        raise typer.Exit(1)


def _rows(export: Path) -> int:
    with export.open(newline="", encoding="utf-8-sig") as f:
        return max(sum(1 for _ in csv.reader(f)) - 1, 0)


def _summary(report: ImportReport, org: str, topic: str) -> None:
    table = Table("import", "count")
    table.add_row("rows read", f"{report.rows_read:,}")
    table.add_row("leads imported", f"{report.leads:,}")
    table.add_row(f"lead-events produced to {topic}", f"{report.events_produced:,}")
    table.add_row("rows refused", f"{len(report.refused):,}")
    if report.visits_capped:
        table.add_row(
            "rows with visits capped (activities.max_visits)", f"{report.visits_capped:,}"
        )
    if report.delivery_failures:
        table.add_row("[red]deliveries failed[/red]", f"{report.delivery_failures:,}")
    console.print(table)
    if report.refused:
        first: dict[str, list[int]] = {}
        for line, reason in report.refused:
            first.setdefault(reason, []).append(line)
        refused = Table("rows refused: reason", "rows", "lines")
        for reason, count in report.reasons().most_common(20):
            lines = first[reason]
            shown = ", ".join(str(n) for n in lines[:5]) + (", ..." if len(lines) > 5 else "")
            refused.add_row(reason, str(count), shown)
        console.print(refused)
    console.print(f"org {org}: importing the same file again produces the same event ids")
