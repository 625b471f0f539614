"""Replay under another model on real PostgreSQL: a backtest writes nothing; a replay
records each lead's new score once, also when interrupted and run again."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from adapters.eventstore import SCORED_TOPIC
from adapters.modelstore import load_scorer
from adapters.settings import ROOT, Settings, settings_env
from devtools.workload import generate
from leadscore.training import train_from_store
from streams.bootstrap import bootstrap
from streams.replay import backtest, count_leads, replay
from tests.support.pipeline import store_history

pytestmark = pytest.mark.integration


@pytest.fixture
def history(settings: Settings, tmp_path: Path) -> Settings:
    """A stored history scored by v1, and a candidate model trained on it, beside v1."""
    models = tmp_path / "models"
    shutil.copytree(ROOT / "models" / "onnx" / "v1", models / "v1")
    s = dataclasses.replace(settings, model_dir=str(models), model_version="v1")
    store_history(s, list(generate(1, 400, 5_000, seed=8)))
    train_from_store("v9", models, s.pg_dsn, num_trees=20)
    return s


def replay_causes(engine) -> Counter[str]:  # type: ignore[no-untyped-def]
    seen: Counter[str] = Counter()
    for note in engine.store.all_notifications([SCORED_TOPIC]):
        ev = engine.store.to_event(note)
        if ev.caused_by_event_id == "replay:v9":
            assert ev.model_version == "v9"
            seen[ev.lead_id] += 1
    return seen


def test_a_backtest_compares_both_models_and_writes_nothing(history: Settings) -> None:
    engine = bootstrap(history)
    try:
        before = engine.store.max_position()
        report = backtest(engine.store, load_scorer(Path(history.model_dir), "v9"), engine.scorer)
        assert report["candidate"]["version"] == "v9" and report["active"]["version"] == "v1"
        for side in ("candidate", "active"):
            assert 0.0 <= report[side]["auc"] <= 1.0 and report[side]["n"] == report["rows"]
        assert report["conversions"] > 0
        assert engine.store.max_position() == before
    finally:
        engine.close()


def test_an_interrupted_replay_resumes_without_double_recording(history: Settings) -> None:
    engine = bootstrap(history)
    candidate = load_scorer(Path(history.model_dir), "v9")
    try:
        leads = count_leads(engine.store)
        first = replay(engine, candidate, limit=150, batch=100)  # stopped part-way
        assert first.leads == 150 and first.rescored == 150  # a new model: every score moves
        rest = replay(engine, candidate, batch=100)
        assert rest.leads == leads and rest.rescored == leads - 150
        assert replay(engine, candidate).rescored == 0
        causes = replay_causes(engine)
        assert len(causes) == leads and set(causes.values()) == {1}
    finally:
        engine.close()


def test_the_command_backtests_and_replays_with_progress(history: Settings) -> None:
    env = {**os.environ, **settings_env(history)}
    cmd = [sys.executable, "-m", "leadscore.cli", "replay", "--model", "v9"]
    since = ["--since", "2020-01-01T00:00:00"]
    dry = subprocess.run(
        [*cmd, *since, "--dry-run"], env=env, capture_output=True, text=True, timeout=300
    )
    assert dry.returncode == 0, dry.stderr
    assert "candidate v9" in dry.stdout and "active v1" in dry.stdout and "auc" in dry.stdout
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "leads rescored with v9" in run.stdout
    bad = subprocess.run([*cmd[:-1], "v404"], env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "v404" in bad.stdout + bad.stderr


def test_a_replay_since_a_time_rescores_only_the_leads_active_since(history: Settings) -> None:
    workload = list(generate(1, 400, 5_000, seed=8))  # the fixture's history
    since = sorted(e.occurred_at for e in workload)[len(workload) * 3 // 4]
    active = {e.lead_id for e in workload if e.occurred_at >= since}
    engine = bootstrap(history)
    candidate = load_scorer(Path(history.model_dir), "v9")
    try:
        assert 0 < len(active) < count_leads(engine.store)
        assert count_leads(engine.store, since=since) == len(active)
        done = replay(engine, candidate, since=since)
        assert done.leads == len(active)
        assert set(replay_causes(engine)) == active
    finally:
        engine.close()
