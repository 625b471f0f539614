"""Train a conversion model from lead-event history and export it to ONNX.

The history is replayed through the domain (the same Lead aggregate and feature spec the
engine scores with), so a model never sees features the engine cannot compute. Rows are
prediction points chosen without looking at the outcome (adapters/training_rows.py):
each open lead right after its lead-events (the states the worker scores) or at fixed
ages after creation, labelled "converts within the horizon".

Every training reports, on one time-ordered holdout with a gap: the model's AUC,
PR-AUC, log-loss, lift at the top decile and calibration, beside the same numbers for a
points model made of the org's rules (HubSpot-style: fit + engagement + rule points), a
logistic regression on the same features, and the model active before it.

A leakage guard refuses a history in which one feature alone, or the moment a row was
observed (its age at the point), separates the classes on the training rows (AUC above
``LEAK_AUC``) — the horizon's labels, or the leads' final outcomes: such a field was
filled in knowing the outcome (a CRM status, a sales tag), or the rows were observed
differently per class. ``allow_leaky`` overrides it and
is recorded in the metadata. (A shuffled-label control was tried and dropped: a model
fit on shuffled labels cannot see a leak in the features, and on small holdouts with
several rows per lead its AUC strayed 0.1 from chance with no leak at all.)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import onnxruntime as ort
from onnxmltools import convert_lightgbm
from onnxmltools.convert.common.data_types import FloatTensorType
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from adapters.drift import reference
from adapters.evaluation import auc, evaluate, lift_at, single_feature_aucs
from adapters.training_rows import (
    HORIZON_DAYS,
    RowStats,
    TrainingRow,
    epoch_ms,
    time_split,
    training_rows,
)
from domain.events import LeadEvent
from domain.featurespec import (
    DEFAULT_SPEC,
    MISSING,
    MISSING_NUMBER,
    FeatureSpec,
    learn_vocabularies,
)
from domain.lead import Lead
from domain.rules import NO_RULES, ScoringRules
from domain.rules import apply as apply_rules
from domain.scoring import ScoreCard, Scorer, engagement_component, fit_component, spec_of

__all__ = ["auc", "evaluate", "lift_at"]  # re-exported for the registry and backtests

INPUT_NAME = "features"
PROBABILITIES = "probabilities"
PARITY_TOLERANCE = 1e-4
LEAK_AUC = 0.97  # a single feature separating the classes this well is a leak
AGE_AT_POINT = "(age at the prediction point)"  # checked by the guard, never a feature


class NotEnoughOutcomesError(ValueError):
    """Too few conversions in the history for a model of its own."""


class ParityError(RuntimeError):
    """The ONNX export does not reproduce LightGBM's probabilities."""


class LeakageError(ValueError):
    """The training rows know their outcome: a feature or the split leaks the label."""


@dataclass(frozen=True)
class ModelMetadata:
    """What ``metadata.json`` holds next to ``model.onnx``."""

    version: str
    trained_at: str
    feature_names: list[str]
    metrics: dict[str, Any]
    params: dict[str, Any]
    n_train: int
    n_holdout: int
    opset: dict[str, int]
    parity_max_abs_diff: float
    input_name: str = INPUT_NAME
    output_name: str = PROBABILITIES
    label_policy: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    # Training distributions the drift monitor compares live traffic with (see reference()).
    reference: dict[str, Any] = field(default_factory=dict)
    # The feature spec with its learned vocabularies: how a worker builds this model's rows.
    feature_spec: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------


def points_score(rules: ScoringRules) -> Any:
    """An observer: the HubSpot-style points score of a lead (fit and engagement, 0-100
    each, averaged, then the org's rule points), the baseline every model must beat."""

    def observe(lead: Lead, at: datetime) -> float:
        fit, eng = fit_component(lead), engagement_component(lead, at)
        card = ScoreCard((fit + eng) / 2.0, fit, eng, "", "points")
        return apply_rules(rules, lead, card).card.total

    return observe


def build_dataset(
    events: Iterable[LeadEvent],
    *,
    spec: FeatureSpec = DEFAULT_SPEC,
    ages_days: Iterable[float] | None = None,
    horizon_days: float = HORIZON_DAYS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labelled rows of a history: X (float32, the spec's columns), y (0/1), t (points, UTC).

    With a spec that has categorical features, its vocabularies must already be learned
    (a model's spec); see adapters/training_rows.py for which points and labels.
    """
    rows = list(
        training_rows(
            events,
            [spec.row],
            ages_days=None if ages_days is None else tuple(ages_days),
            horizon_days=horizon_days,
        )
    )
    X = np.array([r.values[0] for r in rows], dtype=np.float32).reshape(len(rows), len(spec.names))
    y = np.array([r.label for r in rows], dtype=np.int32)
    return X, y, epoch_ms(rows)


# ---------------------------------------------------------------------------
# Training, export, parity
# ---------------------------------------------------------------------------


def lightgbm_params(
    *,
    num_leaves: int,
    learning_rate: float,
    min_data_in_leaf: int,
    seed: int,
    num_threads: int,
) -> dict[str, Any]:
    return {
        "objective": "binary",
        "num_leaves": num_leaves,
        "learning_rate": learning_rate,
        "min_data_in_leaf": min_data_in_leaf,
        "lambda_l2": 1.0,
        "feature_fraction": 0.9,
        "seed": seed,
        "deterministic": True,
        "force_col_wise": True,
        "num_threads": num_threads,
        "verbose": -1,
    }


def to_onnx(booster: lgb.Booster, version: str, width: int | None = None) -> bytes:
    """The booster as an ONNX graph: float32 ``features`` [N, F] -> ``probabilities`` [N, 2]."""
    model = convert_lightgbm(
        booster,
        name=f"leadscore-{version}",
        initial_types=[(INPUT_NAME, FloatTensorType([None, width or booster.num_feature()]))],
        zipmap=False,
    )
    # The converter declares the label output as [1]; it is one label per row.
    for out in model.graph.output:
        dims = out.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "N"
    model.doc_string = f"leadscore conversion model {version}: P(converted) in column 1"
    return model.SerializeToString()


def onnx_probabilities(model_bytes: bytes, X: np.ndarray) -> np.ndarray:
    """P(converted) for each row, computed by onnxruntime from the serialized model."""
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    out = sess.run([PROBABILITIES], {INPUT_NAME: np.ascontiguousarray(X, dtype=np.float32)})[0]
    return np.asarray(out)[:, 1]


def check_parity(
    booster: lgb.Booster,
    model_bytes: bytes,
    X: np.ndarray,
    tolerance: float = PARITY_TOLERANCE,
) -> float:
    """Max |ONNX - LightGBM| probability over ``X``; raises ParityError above ``tolerance``."""
    expected = booster.predict(X)
    got = onnx_probabilities(model_bytes, X)
    if got.shape != expected.shape:
        raise ParityError(f"ONNX gives {got.shape} probabilities, LightGBM {expected.shape}")
    diff = float(np.max(np.abs(got - expected))) if len(X) else 0.0
    if not diff <= tolerance:  # also catches NaN
        raise ParityError(
            f"ONNX and LightGBM probabilities differ by up to {diff:.3g} (> {tolerance:g})"
        )
    return diff


def _opset(model_bytes: bytes) -> dict[str, int]:
    import onnx

    model = onnx.load_from_string(model_bytes)
    return {(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import}


def train(
    events: Iterable[LeadEvent],
    *,
    version: str,
    out_dir: Path,
    spec: FeatureSpec = DEFAULT_SPEC,
    rules: ScoringRules = NO_RULES,
    previous: Scorer | None = None,
    ages_days: tuple[float, ...] | None = None,
    event_sample: float = 1.0,
    horizon_days: float = HORIZON_DAYS,
    num_trees: int = 100,
    num_leaves: int = 15,
    learning_rate: float = 0.08,
    min_data_in_leaf: int = 40,
    seed: int = 7,
    num_threads: int = 1,
    holdout_fraction: float = 0.2,
    overwrite: bool = False,
    provenance: dict[str, Any] | None = None,
    min_conversions: int = 0,
    allow_leaky: bool = False,
) -> ModelMetadata:
    """Train on the rows whose horizon ended before the holdout, report on the holdout.

    ``spec`` names the features (its vocabularies are learned here from the training
    rows); ``rules`` make the points baseline; ``previous`` (the active model) is scored
    on the same holdout. Writes ``out_dir/<version>/model.onnx`` and ``metadata.json``
    only after the ONNX model reproduces LightGBM on the holdout within 1e-4 (else
    ParityError) and the leakage guard passes (else LeakageError, unless
    ``allow_leaky``, which is recorded). ``num_threads`` is 1 by default: on a shared
    2-core box OpenMP's spinning threads made two threads up to 10x slower than one.
    """
    target = Path(out_dir) / version
    if target.exists() and not overwrite:
        raise FileExistsError(f"model version {version!r} already exists at {target}")
    observers: list[Any] = [spec.observe, points_score(rules)]
    if previous is not None:
        observers.append(spec_of(previous).row)
    stats = RowStats()
    rows: list[TrainingRow] = list(
        training_rows(
            events,
            observers,
            ages_days=ages_days,
            horizon_days=horizon_days,
            stats=stats,
            event_sample=event_sample,
        )
    )
    if not rows:
        raise ValueError("the history has no labelled prediction points yet")
    y = np.array([r.label for r in rows], dtype=np.int32)
    tr, ho, holdout_from = time_split(epoch_ms(rows), horizon_days, holdout_fraction)
    converted = len({(rows[i].org_id, rows[i].lead_id) for i in tr if y[i] == 1})
    if converted < min_conversions:
        raise NotEnoughOutcomesError(
            f"the training rows have {converted} converting leads; a model of its own "
            f"needs {min_conversions} (until then the org is scored by the global model)"
        )
    for name, idx in (("training", tr), ("holdout", ho)):
        if len(idx) == 0 or len(np.unique(y[idx])) < 2:
            raise ValueError(
                f"the {name} set needs both converting and other prediction points "
                f"({len(idx)} rows; a longer history or a shorter horizon helps)"
            )

    # Vocabularies from the training rows only: the holdout never shapes its own codes.
    learned = spec.with_vocabularies(
        learn_vocabularies(spec, [rows[i].values[0] for i in tr], y[tr].tolist())
    )
    names = list(learned.names)
    X = np.array([learned.encode(r.values[0]) for r in rows], dtype=np.float32)
    # The guard also reads when each row was looked at (its age at the point): labels that
    # follow the moment of observation, not the lead, are the leak of the old rows.
    # Each column is checked against the label and against the lead's final outcome: a
    # field filled in knowing how the lead ends (a sales tag) predicts the final outcome
    # almost perfectly even where the horizon's label is 0 (a late conversion).
    ages = np.array([[r.age_days] for r in rows], dtype=np.float32)
    final = np.array([r.outcome == "converted" for r in rows], dtype=np.int32)
    checked = np.hstack([X, ages])[tr]
    labels = [*names, AGE_AT_POINT]
    missing: list[float | None] = [
        float(MISSING) if f.categorical else None if f.source == "builtin" else MISSING_NUMBER
        for f in learned.features
    ] + [None]
    single = single_feature_aucs(checked, y[tr], labels, missing)
    single_final = single_feature_aucs(checked, final[tr], labels, missing)
    leaky = {
        n: max(a, single_final.get(n, 0.0))
        for n, a in single.items()
        if max(a, single_final.get(n, 0.0)) > LEAK_AUC
    }
    if leaky and not allow_leaky:
        raise LeakageError(
            "refusing to train: alone, "
            + ", ".join(f"{n} (AUC {a:.3f})" for n, a in sorted(leaky.items()))
            + f" separates converting from other leads (> {LEAK_AUC}). Such a "
            "field is usually filled in after the outcome (a CRM status, a sales tag); drop "
            "it from the feature spec, or train with --allow-leaky to record the override"
        )

    params = lightgbm_params(
        num_leaves=num_leaves,
        learning_rate=learning_rate,
        min_data_in_leaf=min_data_in_leaf,
        seed=seed,
        num_threads=num_threads,
    )
    booster = _fit(params, X[tr], y[tr], names, num_trees)
    model_bytes = to_onnx(booster, version, len(names))
    parity = check_parity(booster, model_bytes, X[ho])
    # Report the model as it will run: the ONNX probabilities.
    p_ho = onnx_probabilities(model_bytes, X[ho])
    metrics = evaluate(y[ho], p_ho)

    metrics["baselines"] = _baselines(rows, X, y, tr, ho, previous)
    metrics["train_auc"] = _round(auc(y[tr], booster.predict(X[tr])))
    metrics["train_positive_rate"] = round(float(y[tr].mean()), 4)
    metrics["holdout_from"] = holdout_from.isoformat()
    metrics["rows"] = {
        "train": len(tr),
        "holdout": len(ho),
        "gap": len(rows) - len(tr) - len(ho),
        "censored": stats.censored,
        "leads": stats.leads,
        "by_outcome": dict(stats.by_outcome),
    }
    metrics["leakage"] = {
        "max_single_feature_auc": max(single.values(), default=None),
        "max_single_feature_auc_final_outcome": max(single_final.values(), default=None),
        "single_feature_auc": dict(sorted(single.items(), key=lambda kv: -kv[1])[:10]),
        "age_at_point_auc": single.get(AGE_AT_POINT),
        "threshold": LEAK_AUC,
        "overridden": sorted(leaky),
        "allow_leaky": allow_leaky,
    }
    gain = booster.feature_importance(importance_type="gain")
    metrics["feature_importance_gain"] = {
        name: round(float(v), 2)
        for name, v in sorted(zip(names, gain, strict=True), key=lambda kv: -kv[1])
    }
    # The reference is the model's training rows and its own (ONNX) scores on them.
    ref = reference(
        X[tr], onnx_probabilities(model_bytes, X[tr]), "training set (at training)", names
    )
    meta = ModelMetadata(
        version=version,
        trained_at=datetime.now(UTC).isoformat(timespec="seconds"),
        feature_names=names,
        metrics=metrics,
        params={
            **params,
            "num_trees": num_trees,
            "holdout_fraction": holdout_fraction,
            "ages_days": None if ages_days is None else list(ages_days),
            "event_sample": event_sample,
            "horizon_days": horizon_days,
        },
        n_train=len(tr),
        n_holdout=len(ho),
        opset=_opset(model_bytes),
        parity_max_abs_diff=parity,
        label_policy=(
            f"prediction points {_points_policy(ages_days, event_sample)} while the lead is "
            f"open; 1 = converts within {horizon_days:g} days "
            "after the point, 0 = disqualified or no conversion within them; points whose "
            "horizon passes the end of the history are censored (left out); features only "
            "from events up to the point; holdout = latest 20% of points, training rows "
            "end their horizon before it"
        ),
        provenance=provenance or {},
        reference=ref,
        feature_spec=learned.to_dict(),
    )
    _write(target, model_bytes, meta, overwrite=overwrite)
    return meta


def _points_policy(ages_days: tuple[float, ...] | None, event_sample: float) -> str:
    if ages_days is None:
        share = "" if event_sample >= 1.0 else f" ({event_sample:.0%} of them, by id hash)"
        return f"right after each lead-event, as of its time{share}"
    return f"at {', '.join(f'{a:g}' for a in ages_days)} days after creation"


def _fit(
    params: dict[str, Any], X: np.ndarray, y: np.ndarray, names: list[str], num_trees: int
) -> lgb.Booster:
    data = lgb.Dataset(X, label=y, feature_name=names, free_raw_data=True)
    return lgb.train(params, data, num_boost_round=num_trees)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _baselines(
    rows: list[TrainingRow],
    X: np.ndarray,
    y: np.ndarray,
    tr: np.ndarray,
    ho: np.ndarray,
    previous: Scorer | None,
) -> dict[str, Any]:
    """The same holdout scored by the points model, a logistic regression on the same
    features, and the previously active model."""
    points = np.array([rows[i].values[1] for i in ho], dtype=np.float64)
    out: dict[str, Any] = {
        "points": {
            "what": "fit + engagement components and the org's rule points (0-100)",
            **evaluate(y[ho], points, probabilities=False),
        }
    }
    logistic = make_pipeline(
        SimpleImputer(strategy="median", keep_empty_features=True),
        StandardScaler(),
        LogisticRegression(max_iter=2000),
    )
    logistic.fit(X[tr], y[tr])
    out["logistic"] = {
        "what": "logistic regression on the same features",
        **evaluate(y[ho], logistic.predict_proba(X[ho])[:, 1]),
    }
    if previous is not None:
        prev_rows = np.array([rows[i].values[2] for i in ho], dtype=np.float32)
        out["previous"] = {
            "what": "the model active before this one",
            "version": previous.version,
            **evaluate(y[ho], np.asarray(previous.predict(prev_rows), dtype=np.float64)),
        }
    return out


def _write(target: Path, model_bytes: bytes, meta: ModelMetadata, *, overwrite: bool) -> None:
    """Write both files into a temporary sibling, then move it in: all or nothing."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; a model directory is for everyone to read
        (tmp / "model.onnx").write_bytes(model_bytes)
        # allow_nan=False: metadata goes into jsonb, which has no NaN; fail here, not there.
        text = json.dumps(asdict(meta), indent=2, allow_nan=False)
        (tmp / "metadata.json").write_text(text + "\n")
        if target.exists() and overwrite:
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def train_from_store(
    version: str,
    out_dir: Path,
    dsn: str,
    *,
    org: str | None = None,
    min_conversions: int = 200,
    **train_kwargs: Any,
) -> ModelMetadata:
    """Train on the lead-events recorded in the event store: one org's, or all (global).

    The same prediction points and labels as any history (adapters/training_rows.py).
    An org needs ``min_conversions`` converting leads in its training rows for a model of
    its own; the global model has no minimum.
    """
    from adapters.eventstore import open_store
    from adapters.history import lead_events

    store = open_store(dsn, cache_size=0)
    try:
        return train(
            lead_events(store, org),
            version=version,
            out_dir=out_dir,
            provenance={"source": "event store", "org": org or "(all orgs)"},
            min_conversions=min_conversions if org is not None else 0,
            **train_kwargs,
        )
    finally:
        store.close()


def train_from_workload(
    version: str,
    out_dir: Path,
    orgs: int = 20,
    leads: int = 20_000,
    events: int = 200_000,
    seed: int = 7,
    progress: bool = True,
    **train_kwargs: Any,
) -> ModelMetadata:
    """Generate a labelled history with the workload generator and train on it."""
    from devtools.workload import generate

    stream: Iterable[LeadEvent] = generate(orgs, leads, events, seed=seed)
    provenance = {
        "generator": "devtools.workload.generate",
        "orgs": orgs,
        "leads": leads,
        "events": events,
        "seed": seed,
    }
    if not progress:
        return train(
            stream,
            version=version,
            out_dir=out_dir,
            seed=seed,
            provenance=provenance,
            **train_kwargs,
        )

    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TimeElapsedColumn,
    )

    # Progress on stderr keeps stdout for the metadata the CLI prints.
    with Progress(
        SpinnerColumn(),
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task("generating + replaying events", total=events)

        def counted(it: Iterable[LeadEvent]) -> Iterator[LeadEvent]:
            n = 0
            for n, ev in enumerate(it, 1):  # noqa: B007 - n is read after the loop
                if n % 5_000 == 0:
                    bar.update(task, completed=n)
                yield ev
            bar.update(task, completed=n)
            bar.add_task("training LightGBM, exporting ONNX, checking parity", total=None)

        return train(
            counted(stream),
            version=version,
            out_dir=out_dir,
            seed=seed,
            provenance=provenance,
            **train_kwargs,
        )
