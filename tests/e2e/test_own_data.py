"""A new customer's path on a world we did not design the features for, end to end.

The second world's lead-events (devtools/world_custom.py: conversion follows an
education company's own fields and time on site) go through Kafka with lead_event v3 to a
real worker and the event store. Then, as the README's "Training on your own data" walks
it, with the real commands: `features suggest --write`, `train --org`, `models promote`,
`replay`. The held-out leads' replayed scores must rank their conversions within 0.02
AUC of a LightGBM given the generator's ground truth at the same moments, and beat the
points model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from adapters.evaluation import auc
from adapters.eventstore import open_store
from adapters.history import lead_events
from adapters.settings import ROOT, Settings, settings_env
from adapters.training_rows import epoch_ms, time_split, training_rows
from devtools.engine_processes import stop_worker, wait_for_group
from devtools.world_custom import CustomWorld, custom_world
from domain.events import EventType
from domain.lead import lead_aggregate_id
from domain.processing import event_time
from domain.rules import NO_RULES
from leadscore.training import lightgbm_params, points_score
from streams.producer import lead_event_encoder, produce_events
from streams.relay import kafka_producer
from streams.wire import SchemaCatalog

pytestmark = pytest.mark.e2e

ORG = "org-custom"
LEADS = 2_500


def cli(s: Settings, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "leadscore.cli", *args],
        env={**os.environ, **settings_env(s)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"leadscore {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


def stored_count(s: Settings) -> int:
    store = open_store(s.pg_dsn, cache_size=0)
    try:
        return sum(1 for _ in lead_events(store, ORG))
    finally:
        store.close()


def direct_model(world: CustomWorld, holdout_from: datetime) -> tuple[lgb.Booster, object]:
    """LightGBM on the ground truth, trained on the same rows the engine trained on."""
    rows = list(training_rows(world.events, [lambda lead, at: world.truth(lead.lead_id, at)]))
    y = np.array([r.label for r in rows])
    tr, _ho, start = time_split(epoch_ms(rows), 30.0, 0.2)
    assert start == holdout_from  # the same split as the engine's training
    levels = {n: sorted({str(r.values[0][n]) for r in rows}) for n in world.truth_categorical}

    def encode(truth: dict[str, float | str]) -> list[float]:
        return [
            float(levels[n].index(str(truth[n])) if str(truth[n]) in levels[n] else -1)
            if n in levels
            else float(truth[n])
            for n in world.truth_names
        ]

    X = np.array([encode(rows[i].values[0]) for i in tr], dtype=np.float32)
    params = lightgbm_params(
        num_leaves=15, learning_rate=0.08, min_data_in_leaf=40, seed=7, num_threads=1
    )
    data = lgb.Dataset(
        X, label=y[tr], feature_name=list(world.truth_names),
        categorical_feature=list(world.truth_categorical),
    )  # fmt: skip
    return lgb.train(params, data, num_boost_round=100), encode


def test_from_lead_events_to_a_promoted_model_that_ranks_held_out_leads(
    settings: Settings, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "v1").symlink_to(ROOT / "models" / "onnx" / "v1", target_is_directory=True)
    s = dataclasses.replace(
        settings, model_dir=str(models), model_version="v1", feature_config_dir=str(tmp_path)
    )
    world = custom_world(org_id=ORG, leads=LEADS, seed=11)
    log = (tmp_path / "worker.log").open("ab")
    worker = subprocess.Popen(
        [sys.executable, "-m", "leadscore.cli", "worker"],
        env={**os.environ, **settings_env(s)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_group(s, worker, timeout=120)
        encoder = lead_event_encoder(SchemaCatalog.from_settings(s), s.topic_lead_events)
        report = produce_events(kafka_producer(s.kafka), s.topic_lead_events, encoder, world.events)
        assert report.sent == len(world.events) and report.failed == 0
        deadline = time.monotonic() + 240
        while stored_count(s) < len(world.events):
            assert time.monotonic() < deadline, (stored_count(s), len(world.events))
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(2)
    finally:
        stop_worker(worker)
        log.close()

    suggested = cli(s, "features", "suggest", "--org", ORG, "--write")
    spec_text = (tmp_path / f"{ORG}.yaml").read_text()
    assert "attribute: occupation" in spec_text and "seconds_on_site" in spec_text
    assert "field: email" not in suggested.stdout and "field: last_name" not in suggested.stdout

    trained = cli(s, "train", "--org", ORG, "--version", "c1", "--min-conversions", "100")
    # The report shows the model, the points model, the logistic baseline and v1.
    for row in ("this model (c1)", "points", "logistic", "previous: v1", "leakage guard"):
        assert row in trained.stderr + trained.stdout, trained.stderr
    meta = json.loads((models / "c1" / "metadata.json").read_text())
    assert meta["provenance"]["org"] == ORG and meta["feature_spec"]["vocabularies"]
    cli(s, "models", "promote", "c1")
    cli(s, "replay", "--model", "c1", "--org", ORG)

    # Held-out leads: created once the holdout had begun, so none of their points trained.
    holdout_from = datetime.fromisoformat(meta["metrics"]["holdout_from"])
    converted = {e.lead_id for e in world.events if e.event_type is EventType.LEAD_CONVERTED}
    held_out = sorted(
        {e.lead_id for e in world.events if e.event_type is EventType.LEAD_CREATED
         and e.occurred_at >= holdout_from}
    )  # fmt: skip
    assert len(held_out) > 200
    store = open_store(s.pg_dsn, cache_size=0)
    try:
        leads = store.load([lead_aggregate_id(ORG, lead) for lead in held_out])
    finally:
        store.close()
    y, ours, points, truth_rows = [], [], [], []
    booster, encode = direct_model(world, holdout_from)
    as_points = points_score(NO_RULES)  # the org has no rules: fit + engagement
    for lead in leads.values():
        assert lead is not None and lead.model_version == "c1"  # replayed by the new model
        y.append(int(lead.lead_id in converted))
        ours.append(lead.score)
        # Every score as of the lead's last lead-event before any outcome (event_time):
        # what sales saw while the lead was open.
        at = event_time(lead)
        points.append(as_points(lead, at))
        truth_rows.append(encode(world.truth(lead.lead_id, at)))  # type: ignore[operator]
    direct = booster.predict(np.array(truth_rows, dtype=np.float32))
    auc_ours, auc_direct, auc_points = auc(y, ours), auc(y, direct), auc(y, points)
    print(f"held-out leads {len(y)}: ours {auc_ours}, direct {auc_direct}, points {auc_points}")
    assert auc_ours is not None and auc_direct is not None and auc_points is not None
    assert auc_ours >= auc_direct - 0.02
    assert auc_ours > auc_points + 0.1


def test_a_model_without_disqualified_leads_registers_and_lists(
    settings: Settings, tmp_path: Path
) -> None:
    """An org with no disqualified leads: metrics that need them are null, so the version
    registers and `models list` works; a broken folder beside it is skipped, not fatal."""
    from domain.featurespec import DEFAULT_SPEC
    from leadscore.training import train

    models = tmp_path / "models"
    models.mkdir()
    (models / "v1").symlink_to(ROOT / "models" / "onnx" / "v1", target_is_directory=True)
    world = custom_world(org_id=ORG, leads=1_500, seed=3)
    events = [e for e in world.events if e.event_type is not EventType.LEAD_DISQUALIFIED]
    train(events, version="nodq", out_dir=models, spec=DEFAULT_SPEC, num_trees=20,
          provenance={"source": "event store", "org": ORG})  # fmt: skip
    broken = models / "broken"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"not a model")
    (broken / "metadata.json").write_text('{"version": "broken", "feature_names": [], "x": NaN}')
    s = dataclasses.replace(settings, model_dir=str(models), model_version="v1")
    listed = cli(s, "models", "list")
    assert "nodq" in listed.stdout and "broken" not in listed.stdout
    cli(s, "models", "list")  # and again: nothing half-registered makes it fail later
    from adapters.model_registry import ModelRegistry

    versions = {m["version"]: m for m in ModelRegistry(s.pg_dsn, models).list()}
    assert versions["nodq"]["scope"] == ORG and "broken" not in versions
    assert versions["nodq"]["metadata"]["metrics"]["rows"]["by_outcome"].get("disqualified") is None
