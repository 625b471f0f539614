"""Training: the dataset has no label leakage, the ONNX export matches LightGBM, the
model learns, and a failed parity check leaves nothing behind."""

from __future__ import annotations

import json
from datetime import timedelta
from itertools import combinations
from pathlib import Path

import lightgbm as lgb
import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

from domain.events import ActivityKind, EventType, LeadEvent
from domain.features import FEATURE_NAMES, features
from domain.lead import Lead
from leadscore import training
from leadscore.training import (
    ModelMetadata,
    ParityError,
    auc,
    build_dataset,
    calibration,
    check_parity,
    lift_at,
    lightgbm_params,
    log_loss,
    onnx_probabilities,
    snapshots,
    to_onnx,
    train,
)
from leadscore.workload import generate
from tests.factories import T0, activity, created, outcome

WORKLOAD = {"orgs": 10, "leads": 5_000, "events": 50_000, "seed": 7}


@pytest.fixture(scope="module")
def history() -> list[LeadEvent]:
    w = WORKLOAD
    return list(generate(w["orgs"], w["leads"], w["events"], seed=w["seed"]))


@pytest.fixture(scope="module")
def dataset(history: list[LeadEvent]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return build_dataset(history)


@pytest.fixture(scope="module")
def trained(
    history: list[LeadEvent], tmp_path_factory: pytest.TempPathFactory
) -> tuple[ModelMetadata, Path]:
    out = tmp_path_factory.mktemp("models")
    return train(history, version="t1", out_dir=out, seed=7), out


def tamper(model_bytes: bytes, delta: float = 0.3) -> bytes:
    """The same graph with every tree's leaf weights shifted: a broken export."""
    model = onnx.load_from_string(model_bytes)
    (node,) = [n for n in model.graph.node if n.op_type == "TreeEnsembleClassifier"]
    for attr in node.attribute:
        if attr.name == "class_weights":
            attr.floats[:] = [w + delta for w in attr.floats]
        elif attr.name == "class_weights_as_tensor":  # newer ai.onnx.ml opsets
            w = numpy_helper.to_array(attr.t) + delta
            attr.t.CopyFrom(numpy_helper.from_array(w.astype(np.float32)))
    return model.SerializeToString()


# -- the dataset -------------------------------------------------------------


def test_dataset_shapes_and_labels(
    history: list[LeadEvent], dataset: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    X, y, t = dataset
    assert X.dtype == np.float32 and X.shape == (len(y), len(FEATURE_NAMES))
    assert set(np.unique(y)) == {0, 1}
    assert t.dtype == np.dtype("datetime64[ms]") and len(t) == len(y)
    converted = {(e.org_id, e.lead_id) for e in history if e.event_type is EventType.LEAD_CONVERTED}
    assert int(y.sum()) == len(converted)  # one positive row per converted lead


def test_outcome_features_are_from_the_state_before_the_outcome(
    history: list[LeadEvent],
) -> None:
    """No label leakage: a row equals the features of the history without its outcome."""
    by_lead: dict[tuple[str, str], list[LeadEvent]] = {}
    for ev in history:
        by_lead.setdefault((ev.org_id, ev.lead_id), []).append(ev)
    checked = 0
    for snap in snapshots(history):
        if snap.kind == "open":
            continue
        events = by_lead[(snap.org_id, snap.lead_id)]
        final = events[-1]
        assert final.event_type in (EventType.LEAD_CONVERTED, EventType.LEAD_DISQUALIFIED)
        assert snap.label == int(final.event_type is EventType.LEAD_CONVERTED)
        assert snap.as_of == final.occurred_at
        lead = Lead.open(events[0])
        for ev in events[1:-1]:  # everything but the outcome
            lead.handle(ev)
        assert lead.outcome is None
        assert snap.row == features(lead, snap.as_of)
        checked += 1
    assert checked > 1_000


def test_the_outcome_event_changes_nothing_in_the_row() -> None:
    """Hand-built: what happens at or after the outcome never reaches the row."""
    filler = [created(lead="filler"), activity(lead="filler", at=T0 + timedelta(days=80))]
    base = [created(), activity(ActivityKind.PAGE_VIEW, at=T0 + timedelta(days=1))]
    won = outcome(EventType.LEAD_CONVERTED, at=T0 + timedelta(days=3))
    # A demo request recorded at the same instant as the outcome, but after it.
    late = activity(ActivityKind.DEMO_REQUEST, at=T0 + timedelta(days=3))
    (a,) = [s for s in snapshots([*base, won, *filler]) if s.lead_id == "lead-1"]
    (b,) = [s for s in snapshots([*base, won, late, *filler]) if s.lead_id == "lead-1"]
    assert a == b and a.label == 1
    assert a.row[FEATURE_NAMES.index("n_page_view")] == 1.0
    assert a.row[FEATURE_NAMES.index("n_demo_request")] == 0.0
    assert a.row[FEATURE_NAMES.index("days_since_last_activity")] == pytest.approx(2.0)


def test_open_leads_are_negatives_only_after_the_cutoff() -> None:
    old = [created(lead="old"), activity(lead="old", at=T0 + timedelta(days=2))]
    young = [created(lead="young", at=T0 + timedelta(days=50))]
    late_win = [
        created(lead="late"),
        outcome(EventType.LEAD_CONVERTED, lead="late", at=T0 + timedelta(days=45)),
    ]
    orphan = [outcome(EventType.LEAD_DISQUALIFIED, lead="orphan", at=T0 + timedelta(days=5))]
    end = [created(lead="clock", at=T0 + timedelta(days=60))]
    events = sorted([*old, *young, *late_win, *orphan, *end], key=lambda e: e.occurred_at)
    rows = {s.lead_id: s for s in snapshots(events)}
    # "young" and "clock" are under 30 days old at the end; "orphan" has no history.
    assert set(rows) == {"old", "late"}
    assert rows["old"].label == 0 and rows["old"].kind == "open"
    assert T0 <= rows["old"].as_of <= T0 + timedelta(days=30)
    assert rows["late"].label == 1  # an outcome after the cutoff still wins
    # The observation moment is fixed per lead: the same on every replay.
    assert next(s for s in snapshots(events) if s.lead_id == "old") == rows["old"]


def test_duplicate_events_are_applied_once() -> None:
    ev = activity(ActivityKind.DEMO_REQUEST, at=T0 + timedelta(days=1))
    events = [created(), ev, ev, outcome(at=T0 + timedelta(days=2))]
    (row,) = snapshots(events)
    assert row.row[FEATURE_NAMES.index("n_demo_request")] == 1.0


# -- the model ---------------------------------------------------------------


def test_the_model_learns_the_hidden_propensity(trained: tuple[ModelMetadata, Path]) -> None:
    meta, _ = trained
    m = meta.metrics
    assert 0.75 < m["auc"] < 0.99
    assert m["auc_dispositioned"] > 0.75
    assert m["lift_top_decile"] > 1.8
    assert m["log_loss"] < 0.6 and m["brier"] < 0.2
    assert sum(row["n"] for row in m["calibration"]) == meta.n_holdout


def test_metadata_and_files(trained: tuple[ModelMetadata, Path]) -> None:
    meta, out = trained
    files = sorted(p.name for p in (out / "t1").iterdir())
    assert files == ["metadata.json", "model.onnx"]
    assert [p.name for p in out.iterdir()] == ["t1"]  # no temporary directory left
    stored = json.loads((out / "t1" / "metadata.json").read_text())
    assert stored["version"] == "t1"
    assert stored["feature_names"] == list(FEATURE_NAMES)
    assert stored["parity_max_abs_diff"] <= 1e-4
    assert stored["opset"]["ai.onnx.ml"] >= 1
    assert stored["n_train"] == meta.n_train and stored["n_holdout"] == meta.n_holdout
    assert abs(meta.n_holdout / (meta.n_train + meta.n_holdout) - 0.2) < 0.01
    assert stored["params"]["num_trees"] == 100
    assert (out / "t1" / "model.onnx").stat().st_size < 1_000_000


def test_onnx_matches_lightgbm_on_the_holdout(
    dataset: tuple[np.ndarray, np.ndarray, np.ndarray], trained: tuple[ModelMetadata, Path]
) -> None:
    """Retrain the same booster (deterministic) and compare it with the written ONNX file."""
    meta, out = trained
    X, y, t = dataset
    order = np.argsort(t, kind="stable")
    tr, ho = order[: meta.n_train], order[meta.n_train :]
    assert t[ho].min() >= t[tr].max()  # a time split: the holdout is the later part
    params = {
        k: v
        for k, v in meta.params.items()
        if k
        in lightgbm_params(num_leaves=1, learning_rate=1, min_data_in_leaf=1, seed=1, num_threads=1)
    }
    booster = lgb.train(
        params,
        lgb.Dataset(X[tr], label=y[tr], feature_name=list(FEATURE_NAMES)),
        num_boost_round=meta.params["num_trees"],
    )
    model_bytes = (out / "t1" / "model.onnx").read_bytes()
    diff = np.abs(onnx_probabilities(model_bytes, X[ho]) - booster.predict(X[ho]))
    assert diff.max() <= 1e-4
    assert check_parity(booster, model_bytes, X[ho]) == pytest.approx(diff.max(), abs=1e-9)


def test_a_tampered_model_fails_the_parity_check(history: list[LeadEvent]) -> None:
    X, y, _ = build_dataset(history[:10_000])
    booster = lgb.train(
        lightgbm_params(
            num_leaves=7, learning_rate=0.1, min_data_in_leaf=20, seed=1, num_threads=1
        ),
        lgb.Dataset(X, label=y),
        num_boost_round=10,
    )
    good = to_onnx(booster, "x")
    assert check_parity(booster, good, X) <= 1e-4
    with pytest.raises(ParityError):
        check_parity(booster, tamper(good), X)


def test_parity_failure_writes_nothing(
    history: list[LeadEvent], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = training.to_onnx
    # The real export, then broken: train must notice before it writes anything.
    monkeypatch.setattr(training, "to_onnx", lambda booster, name: tamper(real(booster, name)))
    with pytest.raises(ParityError):
        train(history[:20_000], version="broken", out_dir=tmp_path, num_trees=20)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_version_is_not_overwritten_by_accident(
    history: list[LeadEvent], tmp_path: Path
) -> None:
    (tmp_path / "v9").mkdir()
    with pytest.raises(FileExistsError):
        train(history[:5_000], version="v9", out_dir=tmp_path, num_trees=5)


# -- metrics -----------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 5)), min_size=2, max_size=40))
def test_auc_equals_the_pairwise_definition(pairs: list[tuple[int, int]]) -> None:
    y = np.array([a for a, _ in pairs])
    p = np.array([b / 5 for _, b in pairs])  # few distinct scores: many ties
    pos, neg = p[y == 1], p[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        assert np.isnan(auc(y, p))
        return
    wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    assert auc(y, p) == pytest.approx(wins / (len(pos) * len(neg)))


def test_metric_values() -> None:
    y = np.array([0, 0, 1, 1])
    assert auc(y, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert log_loss(y, np.array([0.5] * 4)) == pytest.approx(np.log(2))
    y10 = np.array([1] + [0] * 9)
    assert lift_at(y10, np.linspace(1, 0, 10), 0.1) == pytest.approx(10.0)
    table = calibration(np.array([0, 1, 1]), np.array([0.05, 0.95, 1.0]))
    assert [r["n"] for r in table] == [1] + [0] * 8 + [2]
    assert table[9]["observed_rate"] == 1.0
    assert all(a != b for a, b in combinations([r["bin"] for r in table], 2))
