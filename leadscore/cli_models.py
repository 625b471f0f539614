"""`leadscore models …`: the registry of scoring models (adapters/model_registry.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from adapters.settings import get_settings

app = typer.Typer(
    help="Scoring models: list, compare, shadow, promote, retire.", no_args_is_help=True
)
console = Console() if sys.stdout.isatty() else Console(width=120)


def _registry() -> Any:
    from adapters.model_registry import ModelRegistry

    s = get_settings()
    registry = ModelRegistry(s.pg_dsn, Path(s.model_dir))
    registry.sync(preferred=s.model_version or None)
    return registry


def _change(action: str, version: str) -> None:
    from adapters.model_registry import ModelRegistryError

    registry = _registry()
    try:
        scope = getattr(registry, action)(version)
    except ModelRegistryError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    console.print(f"{version} ({scope}): {registry_status(registry, version)}")


def registry_status(registry: Any, version: str) -> str:
    return next(str(m["status"]) for m in registry.list() if m["version"] == version)


@app.command("list")
def list_models() -> None:
    """Every model with its scope, status and training metrics."""
    table = Table("version", "scope", "status", "trained_at", "AUC", "lift@10%", "trained on")
    for m in _registry().list():
        meta = m["metadata"]
        metrics = meta.get("metrics", {})
        table.add_row(
            m["version"],
            m["scope"],
            m["status"],
            str(meta.get("trained_at", ""))[:19],
            _number(metrics.get("auc"), ".3f"),
            _number(metrics.get("lift_top_decile"), ".2f"),
            f"{meta.get('n_train', '')}",
        )
    console.print(table)


def _number(value: object, spec: str) -> str:
    """A metric, or "–" where it could not be computed (null: one class only)."""
    return format(value, spec) if isinstance(value, (int, float)) else "–"


@app.command()
def promote(version: str) -> None:
    """Make VERSION its scope's active model; running workers switch within seconds."""
    _change("promote", version)


@app.command()
def shadow(version: str) -> None:
    """Score with VERSION beside the active model, recording but never publishing."""
    _change("shadow", version)


@app.command()
def retire(version: str) -> None:
    """Take VERSION out of use (not the active one: promote another first)."""
    _change("retire", version)


@app.command()
def compare(version: str) -> None:
    """How shadow model VERSION agrees with the active model, and its lift where outcomes
    are known."""
    from adapters.model_registry import shadow_report

    report = shadow_report(get_settings().pg_dsn, version)
    if not report["leads"]:
        console.print(
            f"no shadow scores for {version}: `leadscore models shadow {version}`, "
            "then let the workers score some leads"
        )
        raise typer.Exit(1)
    table = Table("", f"active {', '.join(report['active'])}", f"shadow {version}")
    table.add_row("leads scored by both", f"{report['leads']:,}", "")
    table.add_row("mean score gap", "", f"{report['mean_abs_diff']:.1f} points")
    table.add_row("within 5 points", "", f"{report['within_5_points']:.0%}")
    rank = report["rank_correlation"]
    table.add_row("rank correlation", "", "-" if rank is None else f"{rank:.2f}")
    table.add_row("same top 10%", "", f"{report['top_decile_overlap']:.0%}")
    table.add_row("leads with an outcome", f"{report['with_outcome']:,}", "")
    if "active_auc" in report:
        table.add_row("AUC", f"{report['active_auc']:.3f}", f"{report['shadow_auc']:.3f}")
        table.add_row("lift@10%", f"{report['active_lift']:.2f}", f"{report['shadow_lift']:.2f}")
    console.print(table)
