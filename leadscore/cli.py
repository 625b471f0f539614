"""`leadscore`: every command a user needs."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from adapters.logs import configure_logging
from adapters.settings import InsecureSettingsError, check_secrets, get_settings
from devtools.schema_registry.cli import registry
from devtools.services.cli import app as services_app
from leadscore.cli_api import register as register_api_commands
from leadscore.cli_dlq import app as dlq_app
from leadscore.cli_features import app as features_app
from leadscore.cli_import import import_export
from leadscore.cli_models import app as models_app
from leadscore.cli_privacy import register as register_privacy_commands
from leadscore.cli_projections import app as projections_app
from leadscore.cli_webhooks import app as webhooks_app

app = typer.Typer(help="Event-sourced lead scoring: Kafka in, scores out.", no_args_is_help=True)
app.add_typer(services_app, name="services")
app.add_typer(projections_app, name="projections")
app.add_typer(dlq_app, name="dlq")
app.add_typer(webhooks_app, name="webhooks")
register_api_commands(app)
register_privacy_commands(app)
app.command()(registry)
app.command(name="import")(import_export)
app.add_typer(models_app, name="models")
app.add_typer(features_app, name="features")
# Logs and CI have no terminal to measure: give tables room rather than 80 columns.
console = Console() if sys.stdout.isatty() else Console(width=120)


@app.callback()
def _setup() -> None:
    s = get_settings()
    configure_logging(s.log_format, s.log_level)
    try:
        check_secrets(s)  # every command: outside dev, no secret at its dev default
    except InsecureSettingsError as exc:
        Console(stderr=True).print(f"[red bold]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from exc


@app.command()
def worker() -> None:
    """Run a worker: consume lead-events, score, store, publish score-events."""
    from adapters.topics import ensure_engine_topics
    from streams.bootstrap import bootstrap
    from streams.worker import run_worker

    s = get_settings()
    ensure_engine_topics(s)
    run_worker(bootstrap(s))


@app.command()
def relay() -> None:
    """Publish score-events and deliver webhooks from the event store's log (elected, like
    the workers' own relay threads; for workers run with LEADSCORE_WORKER_RELAY=0)."""
    from streams.bootstrap import bootstrap
    from streams.worker import run_relay

    run_relay(bootstrap(get_settings()))


@app.command()
def produce(
    orgs: Annotated[int, typer.Option(help="Organizations (tenants)")] = 5,
    leads: Annotated[int, typer.Option(help="Distinct leads")] = 2_000,
    events: Annotated[int, typer.Option(help="Lead-events in all")] = 20_000,
    rate: Annotated[float, typer.Option(help="Events per second; 0 = as fast as possible")] = 0,
    seed: Annotated[int, typer.Option(help="Random seed of the workload")] = 7,
    world: Annotated[
        str,
        typer.Option(
            help="b2b: the demo's funnel (--orgs/--events); custom: one org (org-custom) whose "
            "conversion depends on its own fields and time on site (devtools/world_custom.py)"
        ),
    ] = "b2b",
    leaky: Annotated[
        bool, typer.Option("--leaky", help="custom world: add a tag that gives the outcome away")
    ] = False,
) -> None:
    """Produce a realistic lead-event workload to Kafka."""
    from collections.abc import Iterable

    from adapters import tenancy
    from devtools.workload import generate, org_ids
    from devtools.world_custom import custom_world
    from domain.events import LeadEvent
    from streams.producer import lead_event_encoder, produce_events
    from streams.relay import kafka_producer
    from streams.wire import SchemaCatalog

    if world not in ("b2b", "custom"):
        raise typer.BadParameter("--world is b2b or custom")
    stream: Iterable[LeadEvent]
    if world == "custom":
        generated = custom_world(leads=leads, seed=seed, leaky=leaky)
        tenants, stream, events = [generated.org_id], generated.events, len(generated.events)
    else:
        tenants, stream = org_ids(orgs), generate(orgs, leads, events, seed=seed)
    s = get_settings()
    if s.require_registered_org:
        # Events of unregistered orgs are dead-lettered; an admin registers tenants
        # first, and the generator does it for its own.
        n = asyncio.run(
            tenancy.with_connection(s.pg_dsn, lambda db: tenancy.ensure_orgs(db, tenants))
        )
        if n:
            console.print(f"registered {n} org(s) of the workload")
    encoder = lead_event_encoder(SchemaCatalog.from_settings(s), s.topic_lead_events)
    with _progress() as progress:
        task = progress.add_task("producing", total=events)
        report = produce_events(
            kafka_producer(s.kafka),
            s.topic_lead_events,
            encoder,
            stream,
            rate=rate or None,
            on_progress=lambda n: progress.update(task, completed=n),
        )
    console.print(
        f"sent {report.sent:,} lead-events ({report.failed} failed) in {report.seconds:.1f}s "
        f"= {report.rate:,.0f}/s to {s.topic_lead_events}"
    )
    if report.failed:
        raise typer.Exit(1)


class _RateColumn(ProgressColumn):
    """Leads per second, as a whole number (rich's {task.speed} prints every digit)."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:,.0f} leads/s")


@app.command("world-export")
def world_export(
    leads: Annotated[int, typer.Option(help="Leads (rows) in the export")] = 4_000,
    seed: int = 7,
) -> None:
    """Write the second world (devtools/world_custom.py) as a CRM export CSV to stdout:
    the input of the README's "Training on your own data"."""
    from devtools.world_custom import custom_world
    from devtools.world_export import write_csv

    n = write_csv(custom_world(leads=leads, seed=seed).events, sys.stdout)
    typer.echo(f"{n:,} leads", err=True)


@app.command()
def train(
    version: Annotated[str, typer.Option(help="Version name, e.g. v2")],
    from_store: Annotated[
        bool, typer.Option("--from-store", help="Train on the event store's history")
    ] = False,
    org: Annotated[
        str | None, typer.Option(help="One org's history from the event store: its own model")
    ] = None,
    global_: Annotated[
        bool, typer.Option("--global", help="Every org's history from the event store")
    ] = False,
    min_conversions: Annotated[
        int, typer.Option(help="Converting leads an org needs for a model of its own")
    ] = 200,
    horizon_days: Annotated[
        float, typer.Option(help="Label: converts within this many days after the point")
    ] = 30.0,
    ages: Annotated[
        str,
        typer.Option(
            help="Prediction points at these days after creation (e.g. 1,3,7,14,30) "
            "instead of right after each lead-event"
        ),
    ] = "",
    event_sample: Annotated[
        float, typer.Option(help="Share of lead-events used as prediction points (0-1]")
    ] = 1.0,
    allow_leaky: Annotated[
        bool,
        typer.Option("--allow-leaky", help="Train despite the leakage guard (recorded)"),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the whole metadata")] = False,
    orgs: int = 20,
    leads: int = 20_000,
    events: int = 200_000,
    seed: int = 7,
) -> None:
    """Train a LightGBM model and export it to ONNX, from the event store or generated data.

    --org X trains X's own model (it needs --min-conversions) on the features of
    config/features/X.yaml (or default.yaml), compared with X's rules as a points model and
    X's active model; --global (or --from-store) one for every org; with neither the history
    is generated (--orgs/--leads/--events/--seed). The new version is registered, not
    used: see `leadscore models`.
    """
    from leadscore.training import (
        LeakageError,
        NotEnoughOutcomesError,
        ParityError,
        train_from_store,
        train_from_workload,
    )

    s = get_settings()
    if org is not None and global_:
        raise typer.BadParameter("--org and --global exclude each other")
    try:
        points = tuple(float(a) for a in ages.split(",") if a.strip()) or None
    except ValueError:
        raise typer.BadParameter(f"--ages takes days, comma-separated: {ages!r}") from None
    if not 0 < event_sample <= 1:
        raise typer.BadParameter("--event-sample is a share in (0, 1]")
    common = {
        "ages_days": points,
        "event_sample": event_sample,
        "horizon_days": horizon_days,
        "allow_leaky": allow_leaky,
    }
    from_store = from_store or global_ or org is not None
    try:
        if from_store:
            spec, rules, previous = _training_context(s, org)
            console.print(
                f"features: {len(spec.names)} from spec {spec.version!r}; "
                f"compared with {previous.version if previous else 'no active model'}"
            )
            with console.status("replaying the event store, training, checking parity"):
                meta = train_from_store(
                    version,
                    Path(s.model_dir),
                    s.pg_dsn,
                    org=org,
                    min_conversions=min_conversions,
                    spec=spec,
                    rules=rules,
                    previous=previous,
                    **common,
                )
        else:
            meta = train_from_workload(
                version,
                Path(s.model_dir),
                orgs=orgs,
                leads=leads,
                events=events,
                seed=seed,
                **common,
            )
    except (NotEnoughOutcomesError, LeakageError, ParityError, ValueError, FileExistsError) as exc:
        console.print(f"[red]not trained:[/red] {exc}")
        raise typer.Exit(1) from None
    if from_store:
        # Registered and shared at once: workers on other machines can load it.
        from adapters.model_registry import ModelRegistry

        ModelRegistry(s.pg_dsn, Path(s.model_dir)).sync(preferred=s.model_version or None)
    if json_out:
        console.print_json(data=_as_dict(meta))
        return
    _print_report(meta)


def _training_context(s: object, org: str | None) -> tuple[object, object, object]:
    """The org's feature spec and rules, and the model active for it now (if on disk)."""
    from adapters.featurebook import load_spec
    from adapters.model_registry import GLOBAL, ModelRegistry
    from adapters.modelstore import ModelNotFoundError, load_scorer
    from adapters.rulebook import RuleBook

    spec = load_spec(Path(s.feature_config_dir), org)  # type: ignore[attr-defined]
    book = RuleBook.load(Path(s.scoring_config_dir))  # type: ignore[attr-defined]
    rules = book(org) if org else book.default
    assignments = ModelRegistry(s.pg_dsn, Path(s.model_dir)).assignments()  # type: ignore[attr-defined]
    active = (assignments.get(org) if org else None) or assignments.get(GLOBAL)
    previous = None
    if active is not None and active.active:
        try:
            previous = load_scorer(Path(s.model_dir), active.active)  # type: ignore[attr-defined]
        except ModelNotFoundError:
            console.print(f"active model {active.active} is not on this machine: not compared")
    return spec, rules, previous


def _print_report(meta: object) -> None:
    """The holdout numbers of the new model beside its baselines, and the guard's."""
    m = meta.metrics  # type: ignore[attr-defined]
    table = Table(
        "on the same holdout", "AUC", "PR-AUC", "log-loss", "lift@10%", "ECE",
        title=f"model {meta.version}: {m['rows']['holdout']:,} holdout rows from "  # type: ignore[attr-defined]
        f"{m['holdout_from'][:10]}, {m['rows']['train']:,} training rows",
    )  # fmt: skip

    def cell(value: object) -> str:
        return "–" if value is None else f"{value}"

    def row(name: str, r: dict[str, object]) -> None:
        table.add_row(
            name, cell(r.get("auc")), cell(r.get("pr_auc")), cell(r.get("log_loss")),
            cell(r.get("lift_top_decile")), cell(r.get("ece")),
        )  # fmt: skip

    row(f"this model ({meta.version})", m)  # type: ignore[attr-defined]
    for name, b in m["baselines"].items():
        row(f"{name}: {b.get('version', b['what'])}" if name == "previous" else name, b)
    console.print(table)
    leak = m["leakage"]
    console.print(
        f"leakage guard: strongest single feature AUC {leak['max_single_feature_auc']}, "
        f"age at the point {leak['age_at_point_auc']} (refused above {leak['threshold']})"
        + (f"; OVERRIDDEN for {leak['overridden']}" if leak["overridden"] else "")
    )
    top = list(m["feature_importance_gain"].items())[:5]
    console.print("top features by gain: " + ", ".join(f"{k} {v:,.0f}" for k, v in top))
    typer.echo(f"trained {meta.version}: {Path(get_settings().model_dir) / meta.version}")  # type: ignore[attr-defined]


@app.command()
def replay(
    model: Annotated[str, typer.Option(help="The model version to rescore with, e.g. v2")],
    org: Annotated[str | None, typer.Option(help="Only this org's leads")] = None,
    since: Annotated[
        datetime | None,
        typer.Option(help="Only leads with a lead-event at or after this time (UTC if naive)"),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Backtest against the active model; write nothing")
    ] = False,
) -> None:
    """Rescore history with another model, or backtest it (--dry-run).

    Rerunning an interrupted replay resumes it: leads already rescored do not change.
    """
    from rich.progress import TaskProgressColumn, TimeElapsedColumn

    from adapters.modelstore import ModelNotFoundError, load_scorer
    from streams import replay as replays
    from streams.bootstrap import bootstrap

    s = get_settings()
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    try:
        candidate = load_scorer(Path(s.model_dir), model)
    except ModelNotFoundError as exc:
        raise typer.BadParameter(str(exc)) from None
    engine = bootstrap(s)
    try:
        if dry_run:
            with console.status("replaying the history into labelled rows, scoring both"):
                active = engine.processor.models(org) if org else engine.scorer
                report = replays.backtest(engine.store, candidate, active, org, since)
            table = Table("metric", f"candidate {model}", f"active {active.version}")
            for key in ("auc", "log_loss", "brier", "lift_top_decile", "ece", "mean_predicted"):
                table.add_row(key, str(report["candidate"][key]), str(report["active"][key]))
            console.print(table)
            rows, conversions = report["rows"], report["conversions"]
            console.print(f"{rows:,} labelled leads, {conversions:,} conversions")
            return
        total = replays.count_leads(engine.store, org, since)
        progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TaskProgressColumn(), _RateColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), console=console,
        )  # fmt: skip
        with progress:
            task = progress.add_task(f"rescoring with {model}", total=total)
            done = replays.replay(
                engine,
                candidate,
                org,
                on_batch=lambda n, _c: progress.advance(task, n),
                since=since,
            )
        console.print(f"{done.leads:,} leads rescored with {model}; {done.rescored:,} changed")
    finally:
        engine.close()


@app.command()
def demo(
    orgs: int = 5,
    leads: int = 2_000,
    events: int = 20_000,
    rate: Annotated[float, typer.Option(help="Offered load, events/s")] = 1_000,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for every lead's score")] = 300,
    down: Annotated[bool, typer.Option("--down", help="Stop the API a demo left running")] = False,
) -> None:
    """Start a worker, produce a workload, wait until every lead is scored, summarise."""
    from devtools.engine_processes import stop_api
    from leadscore.demo import run_demo

    if down:
        stop_api(get_settings())
        return

    ok = run_demo(
        get_settings(), console, orgs=orgs, leads=leads, events=events, rate=rate, timeout=timeout
    )
    if not ok:
        raise typer.Exit(1)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def _as_dict(obj: object) -> dict[str, object]:
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return obj
    return dict(vars(obj))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
