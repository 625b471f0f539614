"""Replay: events/s of history reread and rescored by `leadscore replay`, and of its backtest.

A history (default 200,000 lead-events over 20,000 leads in 20 orgs) is stored once
through the engine's own batch processor in a database of its own; every replay run gets
a fresh copy of it (CREATE DATABASE ... TEMPLATE), because a replay records the changed
scores and a rerun would find nothing left to change. The candidate model is trained for
the bench from a generated history (as `leadscore train` does) into a scratch model
directory beside a copy of the committed v1, the active model.

Timed in-process, the functions the command runs: ``streams.replay.replay`` (rescoring,
one transaction per 500 leads) and ``streams.replay.backtest`` (``--dry-run``: the
labelled rows rebuilt from the log, both models scored). Peer: reading the notification
log alone and mapping each entry to its domain event (``LeadStore.all_notifications`` +
``to_event``): the read ceiling both stand on. events/s = stored events (lead-events and
scores) in the log / seconds.

Cold start, on the same history: every lead loaded as a restarted worker loads them
(``LeadStore.load``, batches of LEADSCORE_BATCH_SIZE ids, nothing cached), from its latest
snapshot and the events after it; peer: the same store with snapshots off, every lead
from its whole history. The generator gives a few leads thousands of events (the median
lead a handful), which is where snapshots matter.

Sizes: LEADSCORE_BENCH_REPLAY_EVENTS, LEADSCORE_BENCH_REPLAY_LEADS; LEADSCORE_BENCH_RUNS.
"""

from __future__ import annotations

import dataclasses
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from adapters.eventstore import LeadStore, open_store, postgres_env
from adapters.modelstore import load_scorer
from adapters.settings import Settings
from bench import stack
from bench.harness import RUNS, Spread, paired_ratio, write_results
from devtools import services
from devtools.workload import generate
from streams.bootstrap import bootstrap

console = Console()
EVENTS = stack.env_int("LEADSCORE_BENCH_REPLAY_EVENTS", 200_000)
LEADS = stack.env_int("LEADSCORE_BENCH_REPLAY_LEADS", 20_000)
ORGS = stack.env_int("LEADSCORE_BENCH_ORGS", 20)
CANDIDATE = "bench-candidate"


def models(tmp: Path, active_dir: Path) -> Path:
    """A scratch model directory: the committed v1 and a bench candidate."""
    from leadscore.training import train_from_workload

    shutil.copytree(active_dir / "v1", tmp / "v1")
    train_from_workload(
        CANDIDATE, tmp, orgs=10, leads=5_000, events=60_000, seed=23, progress=False
    )
    return tmp


def seed(s: Settings) -> int:
    """Store the history through the engine's batch processor; returns stored events."""
    from streams.codec import event_to_record
    from streams.wire import LEAD_EVENT_SCHEMA, AvroTopic

    engine = bootstrap(s)
    enc = AvroTopic(engine.catalog, s.topic_lead_events, LEAD_EVENT_SCHEMA)
    try:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=console, transient=True,
        ) as progress:  # fmt: skip
            task = progress.add_task("storing the history", total=EVENTS)
            batch: list[bytes] = []
            for ev in generate(ORGS, LEADS, EVENTS, seed=29):
                batch.append(enc.encode(event_to_record(ev)))
                if len(batch) == 1000:
                    engine.processor.process(batch)
                    progress.advance(task, len(batch))
                    batch = []
            if batch:
                engine.processor.process(batch)
                progress.advance(task, len(batch))
        return engine.store.max_position()
    finally:
        engine.close()


def copy_database(base: Settings, template: str, name: str) -> str:
    with psycopg.connect(base.pg_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
    return services.postgres.with_dbname(base.pg_dsn, name)


def time_replay(base: Settings, s: Settings, template: str) -> tuple[float, int, int]:
    """(seconds, leads, scores changed) of one replay on a fresh copy of the history."""
    from streams import replay as replays

    name = f"{template}_r{secrets.token_hex(2)}"
    copy = dataclasses.replace(s, pg_dsn=copy_database(base, template, name))
    try:
        engine = bootstrap(copy)
        candidate = load_scorer(Path(s.model_dir), CANDIDATE)
        try:
            started = time.perf_counter()
            report = replays.replay(engine, candidate)
            seconds = time.perf_counter() - started
        finally:
            engine.close()
    finally:
        services.drop_database(base, name)
    return seconds, report.leads, report.rescored


def time_backtest(s: Settings) -> tuple[float, int]:
    from streams import replay as replays

    engine = bootstrap(s)
    try:
        candidate = load_scorer(Path(s.model_dir), CANDIDATE)
        started = time.perf_counter()
        report = replays.backtest(engine.store, candidate, engine.scorer)
        return time.perf_counter() - started, int(report["rows"])
    finally:
        engine.close()


def time_log_read(s: Settings) -> tuple[float, int]:
    store = open_store(s.pg_dsn, cache_size=0)
    try:
        started = time.perf_counter()
        n = 0
        for note in store.all_notifications():
            store.to_event(note)
            n += 1
        return time.perf_counter() - started, n
    finally:
        store.close()


def time_cold_load(s: Settings, *, snapshots: bool) -> tuple[float, int]:
    """(seconds, leads) to load every lead of the history in batches, nothing cached."""
    env = postgres_env(s.pg_dsn, cache_size=s.aggregate_cache_size)
    if not snapshots:
        env["IS_SNAPSHOTTING_ENABLED"] = "n"
    store = LeadStore(env=env)
    try:
        with psycopg.connect(s.pg_dsn) as conn:
            ids = [i for (i,) in conn.execute("SELECT DISTINCT originator_id FROM leads_events")]
        started = time.perf_counter()
        for i in range(0, len(ids), s.batch_size):
            loaded = store.load(ids[i : i + s.batch_size])
            assert all(lead is not None for lead in loaded.values())
        return time.perf_counter() - started, len(ids)
    finally:
        store.close()


def events_read_cold(s: Settings) -> tuple[int, int, int]:
    """(stored events, snapshots, events after each lead's latest snapshot)."""
    with psycopg.connect(s.pg_dsn) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM leads_events), (SELECT count(*) FROM leads_snapshots), "
            "(SELECT count(*) FROM leads_events e LEFT JOIN (SELECT originator_id, "
            "max(originator_version) AS v FROM leads_snapshots GROUP BY 1) l USING (originator_id) "
            "WHERE e.originator_version > coalesce(l.v, 0))"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def main() -> None:
    base = stack.base_settings()
    tag = secrets.token_hex(3)
    template = f"leadscore_bench_replay_{tag}"
    tmp = Path(tempfile.mkdtemp(prefix="leadscore-bench-models-"))
    s = dataclasses.replace(
        base,
        pg_dsn=services.ensure_database(base, template),
        model_dir=str(tmp),
        model_version="v1",
        require_registered_org=False,
    )
    console.rule(f"[bold]replay: {EVENTS:,} events over {LEADS:,} leads")
    try:
        with console.status("training the candidate model"):
            models(tmp, Path(base.model_dir))
        stored = seed(s)
        replays, backtests, reads, colds, colds_full = [], [], [], [], []
        leads = changed = rows = 0
        for i in range(RUNS):
            with console.status(f"run {i + 1}/{RUNS}: log read, replay, backtest, cold start"):
                seconds, n = time_log_read(s)
                reads.append(n / seconds)
                seconds, leads, changed = time_replay(base, s, template)
                replays.append(stored / seconds)
                seconds, rows = time_backtest(s)
                backtests.append(stored / seconds)
                seconds, loaded = time_cold_load(s, snapshots=True)
                colds.append(loaded / seconds)
                seconds, loaded = time_cold_load(s, snapshots=False)
                colds_full.append(loaded / seconds)
            console.print(
                f"  run {i + 1}: replay {replays[-1]:,.0f}, backtest {backtests[-1]:,.0f}, "
                f"log read {reads[-1]:,.0f} events/s; cold start {colds[-1]:,.0f} leads/s, "
                f"{colds_full[-1]:,.0f} without snapshots"
            )
        in_store, snapshots, after_snapshots = events_read_cold(s)
    finally:
        services.drop_database(base, template)
        shutil.rmtree(tmp, ignore_errors=True)

    rp, bt, rd = Spread.of(replays), Spread.of(backtests), Spread.of(reads)
    cold, cold_full = Spread.of(colds), Spread.of(colds_full)
    r_cold = paired_ratio(colds, colds_full)
    r_rp, r_bt = paired_ratio(replays, reads), paired_ratio(backtests, reads)
    target = "met" if rp.median >= 50_000 else "not met"
    body = "\n".join(
        [
            f"History: {EVENTS:,} lead-events over {leads:,} leads in {ORGS} orgs stored by the "
            f"engine's batch processor: {stored:,} events in the log (lead-events and scores).\n",
            "| what | stored events/s | leads/s | ratio to the log read (paired) |",
            "|---|---|---|---|",
            f"| `leadscore replay --model {CANDIDATE}`: rescore every lead, record changes "
            f"({changed:,} of {leads:,} changed) | **{rp}** | "
            f"{rp.median * leads / stored:,.0f} | "
            f"{r_rp.median:.2f} ({r_rp.low:.2f}–{r_rp.high:.2f}) |",
            f"| `leadscore replay --model {CANDIDATE} --dry-run`: backtest, {rows:,} labelled "
            f"leads, both models | {bt} | {bt.median * leads / stored:,.0f} | "
            f"{r_bt.median:.2f} ({r_bt.low:.2f}–{r_bt.high:.2f}) |",
            f"| peer: notification log read + mapped to domain events | {rd} | — | 1 |",
            "",
            f"Target >= 50,000 events/s for replay: {target} ({rp.median:,.0f}). Timed "
            "in-process (the functions the command calls, without its start-up); each "
            "replay on a fresh copy of the history (CREATE DATABASE ... TEMPLATE).",
            "",
            f"Cold start: every one of the {loaded:,} leads loaded in batches of "
            f"{s.batch_size:,} ids with nothing cached, as a restarted worker loads them "
            f"(the store holds {snapshots:,} snapshots, one per {s.snapshot_interval} events "
            "of a lead):\n",
            "| loaded from | leads/s | stored events read | ratio (paired) |",
            "|---|---|---|---|",
            f"| latest snapshot + the events after it | **{cold}** | {after_snapshots:,} | "
            f"{r_cold.median:.2f} ({r_cold.low:.2f}–{r_cold.high:.2f}) |",
            f"| peer: the whole history (snapshots off) | {cold_full} | {in_store:,} | 1 |",
            "",
            f"What bounds it: reading the log and mapping each row to its domain event, the "
            f"first thing any replay does, ran at {rd.median:,.0f} events/s here"
            + (
                ", below the target on its own; a replay then rescores, explains and "
                "records a score for every lead whose score the new model moves."
                if rd.median < 50_000
                else "."
            ),
        ]
    )
    console.print(body)
    console.print(f"written to {write_results('replay', body)}")


if __name__ == "__main__":
    main()
