"""`leadscore features`: propose and check the feature specs training reads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.table import Table

from adapters.settings import get_settings

app = typer.Typer(help="Feature specs: which of an org's fields become model features.")
console = Console(stderr=True)


@app.command()
def suggest(
    org: Annotated[str, typer.Option(help="The org whose stored history is read")],
    write: Annotated[
        bool, typer.Option("--write", help="Save as config/features/<org>.yaml (not overwriting)")
    ] = False,
) -> None:
    """Propose a feature spec from the org's stored history (types, cardinality, coverage).

    The spec goes to stdout as YAML, the findings behind it to stderr.
    """
    from adapters.eventstore import open_store
    from adapters.history import lead_events
    from domain.featurespec import parse
    from leadscore.featuresuggest import DISTINCT_COUNTED
    from leadscore.featuresuggest import suggest as propose

    s = get_settings()
    store = open_store(s.pg_dsn, cache_size=0)
    try:
        with console.status(f"reading {org}'s history"):
            doc, findings = propose(lead_events(store, org))
    finally:
        store.close()
    if not findings:
        console.print(f"[red]no lead-events of {org} in the event store[/red]")
        raise typer.Exit(1)
    parse(doc, "the proposal")  # what is proposed must be a spec training accepts
    table = Table("candidate", "leads with it", "distinct", "numeric", "proposed")
    for f in findings:
        distinct = (
            f"{f.distinct:,}" if f.distinct <= DISTINCT_COUNTED else f"over {DISTINCT_COUNTED}"
        )
        table.add_row(f.what, f"{f.coverage:.0%}", distinct, f"{f.numeric_share:.0%}", f.decision)
    console.print(table)
    text = f"# Proposed by `leadscore features suggest --org {org}`; review before training.\n"
    text += yaml.safe_dump(doc, sort_keys=False)
    if write:
        target = Path(s.feature_config_dir) / f"{org}.yaml"
        if target.exists():
            console.print(f"[red]{target} exists; not overwritten[/red]")
            raise typer.Exit(1)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        console.print(f"saved {target}")
    typer.echo(text, nl=False)


@app.command()
def show(org: Annotated[str, typer.Option(help="The org")]) -> None:
    """Which spec file training would use for the org, and the features it names."""
    from adapters.featurebook import load_spec, spec_path

    s = get_settings()
    path = spec_path(Path(s.feature_config_dir), org)
    spec = load_spec(Path(s.feature_config_dir), org)
    console.print(f"{org}: {path or 'no file: the builtin features'} (version {spec.version})")
    for f in spec.features:
        typer.echo(f"{f.name}\t{'categorical' if f.categorical else 'numeric'}\t{f.source}")
