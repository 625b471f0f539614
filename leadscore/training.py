"""Train a conversion model from lead-event history and export it to ONNX.

The history is replayed through the domain (the same Lead aggregate and
``features`` the engine scores with), so a model never sees features the engine
cannot compute. Each lead gives at most one labelled row:

* a lead whose first outcome is LeadConverted (1) or LeadDisqualified (0) gives
  its features as of the outcome's time, from its state just *before* that event;
* a lead with no outcome is a negative (0) once it has been open
  ``open_cutoff_days`` (30) days without one. Its features are taken at a moment
  drawn uniformly from those 30 days (from a hash of its ids, so the same on
  every replay), from its state at that moment. Not at exactly day 30: every such
  row would then say ``days_since_created == 30`` and the model learnt a spike
  there (a lead scored at day 30.0 got ~1%). If the lead converts or is
  disqualified later, that outcome wins. Open leads younger than the cutoff at the
  end of the history are left out: we do not know yet how they end.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import onnxruntime as ort
from onnxmltools import convert_lightgbm
from onnxmltools.convert.common.data_types import FloatTensorType

from domain import drift
from domain.events import EventType, LeadEvent
from domain.features import FEATURE_NAMES, features
from domain.lead import Lead

INPUT_NAME = "features"
PROBABILITIES = "probabilities"
PARITY_TOLERANCE = 1e-4
OPEN_CUTOFF_DAYS = 30

_OUTCOMES = {EventType.LEAD_CONVERTED: 1, EventType.LEAD_DISQUALIFIED: 0}


class NotEnoughOutcomesError(ValueError):
    """Too few conversions in the history for a model of its own."""


class ParityError(RuntimeError):
    """The ONNX export does not reproduce LightGBM's probabilities."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One labelled row: a lead's features as of ``as_of``."""

    org_id: str
    lead_id: str
    as_of: datetime
    label: int
    kind: str  # "converted", "disqualified" or "open" (no outcome after the cutoff)
    row: list[float]


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


# ---------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------


def snapshots(
    events: Iterable[LeadEvent], *, open_cutoff_days: float = OPEN_CUTOFF_DAYS
) -> Iterator[Snapshot]:
    """Replay ``events`` (each lead's in time order) and yield one labelled row per lead.

    Rows come in the order their label became known: outcomes as they happen, open
    negatives at the end.
    """
    cutoff = timedelta(days=open_cutoff_days)
    leads: dict[tuple[str, str], Lead] = {}
    observe: dict[tuple[str, str], datetime] = {}  # when an open lead is looked at
    done: set[tuple[str, str]] = set()  # leads whose outcome row is out: ignore the rest
    provisional: dict[tuple[str, str], Snapshot] = {}  # open negatives, until an outcome
    # Ids seen, for duplicates older than what a Lead remembers (Lead.RECENT_EVENT_IDS).
    seen: set[tuple[str, str, str]] = set()
    end: datetime | None = None
    for ev in events:
        if end is None or ev.occurred_at > end:
            end = ev.occurred_at
        key = (ev.org_id, ev.lead_id)
        if key in done or (*key, ev.event_id) in seen:
            continue
        seen.add((*key, ev.event_id))
        lead = leads.get(key)
        if lead is None:
            # A lead first seen through its outcome has no history to learn from.
            if ev.event_type in _OUTCOMES:
                done.add(key)
                continue
            leads[key] = lead = Lead.open(ev)
            lead.collect_events()
            observe[key] = lead.created_at + cutoff * _unit(key)
            continue
        if key not in provisional and ev.occurred_at > observe[key]:
            # Its state now is its state at the observation time: this event is the
            # first after it.
            provisional[key] = _snapshot(lead, observe[key], 0, "open")
        label = _OUTCOMES.get(ev.event_type)
        if label is not None:
            # Features from the state *before* the outcome is applied: no label leakage.
            yield _snapshot(lead, ev.occurred_at, label, str(ev.event_type))
            provisional.pop(key, None)
            done.add(key)
            del leads[key], observe[key]
            continue
        lead.handle(ev)
        lead.collect_events()  # the replay keeps state, not the domain events
    if end is None:
        return
    for key, lead in leads.items():
        if lead.created_at + cutoff > end:
            continue  # still young: its label is not known yet
        snap = provisional.get(key)
        yield snap if snap is not None else _snapshot(lead, observe[key], 0, "open")


def _unit(key: tuple[str, str]) -> float:
    """A number in [0, 1) fixed by the lead's ids (not Python's per-process hash())."""
    digest = hashlib.blake2b("\x1f".join(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _snapshot(lead: Lead, as_of: datetime, label: int, kind: str) -> Snapshot:
    kind = {"LeadConverted": "converted", "LeadDisqualified": "disqualified"}.get(kind, kind)
    return Snapshot(lead.org_id, lead.lead_id, as_of, label, kind, features(lead, as_of))


def _epoch_ms(when: datetime) -> int:
    return round(when.timestamp() * 1000)


def _arrays(rows: list[Snapshot]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X = np.array([s.row for s in rows], dtype=np.float32).reshape(len(rows), len(FEATURE_NAMES))
    y = np.array([s.label for s in rows], dtype=np.int32)
    # Epoch milliseconds, not aware datetimes: numpy has no time zones.
    t = np.array([_epoch_ms(s.as_of) for s in rows], dtype="datetime64[ms]")
    return X, y, t


def build_dataset(
    events: Iterable[LeadEvent], *, open_cutoff_days: float = OPEN_CUTOFF_DAYS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labelled rows from a history: X (float32, FEATURE_NAMES order), y (0/1), t (as-of, UTC).

    See the module docstring for how leads are labelled and which are left out.
    """
    return _arrays(list(snapshots(events, open_cutoff_days=open_cutoff_days)))


# ---------------------------------------------------------------------------
# Metrics (numpy only: a handful of lines each)
# ---------------------------------------------------------------------------


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC via the rank-sum (Mann-Whitney) statistic, ties at average rank."""
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    sorted_p = np.asarray(p)[order]
    ranks = np.empty(len(p), dtype=np.float64)
    # Average ranks within runs of equal scores.
    _, first, counts = np.unique(sorted_p, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-15, 1 - 1e-15)
    y = np.asarray(y, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def lift_at(y: np.ndarray, p: np.ndarray, fraction: float = 0.1) -> float:
    """Positive rate among the top ``fraction`` by score, over the overall positive rate."""
    y = np.asarray(y, dtype=np.float64)
    base = y.mean() if len(y) else 0.0
    if base == 0:
        return float("nan")
    k = max(1, math.ceil(fraction * len(y)))
    top = np.argsort(-np.asarray(p), kind="mergesort")[:k]
    return float(y[top].mean() / base)


def calibration(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Reliability table: per equal-width probability bin, mean predicted vs observed."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    table = []
    for b in range(bins):
        mask = idx == b
        n = int(mask.sum())
        table.append(
            {
                "bin": f"{b / bins:.1f}-{(b + 1) / bins:.1f}",
                "n": n,
                "mean_predicted": round(float(p[mask].mean()), 4) if n else None,
                "observed_rate": round(float(y[mask].mean()), 4) if n else None,
            }
        )
    return table


def evaluate(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    """The quality numbers stored with every model."""
    y = np.asarray(y)
    p = np.asarray(p, dtype=np.float64)
    table = calibration(y, p)
    # Expected calibration error: bin gaps weighted by bin size.
    ece = sum(
        row["n"] * abs(row["mean_predicted"] - row["observed_rate"]) for row in table if row["n"]
    ) / max(1, len(y))
    return {
        "auc": round(auc(y, p), 4),
        "log_loss": round(log_loss(y, p), 4),
        "brier": round(float(np.mean((p - y) ** 2)), 4),
        "lift_top_decile": round(lift_at(y, p, 0.1), 3),
        "ece": round(float(ece), 4),
        "positive_rate": round(float(np.mean(y)), 4),
        "mean_predicted": round(float(np.mean(p)), 4),
        "n": len(y),
        "calibration": table,
    }


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


def to_onnx(booster: lgb.Booster, version: str) -> bytes:
    """The booster as an ONNX graph: float32 ``features`` [N, F] -> ``probabilities`` [N, 2]."""
    model = convert_lightgbm(
        booster,
        name=f"leadscore-{version}",
        initial_types=[(INPUT_NAME, FloatTensorType([None, len(FEATURE_NAMES)]))],
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


def _time_split(t: np.ndarray, holdout_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(t, kind="stable")
    cut = int(round(len(t) * (1.0 - holdout_fraction)))
    return order[:cut], order[cut:]


def train(
    events: Iterable[LeadEvent],
    *,
    version: str,
    out_dir: Path,
    num_trees: int = 100,
    num_leaves: int = 15,
    learning_rate: float = 0.08,
    min_data_in_leaf: int = 40,
    seed: int = 7,
    num_threads: int = 1,
    holdout_fraction: float = 0.2,
    open_cutoff_days: float = OPEN_CUTOFF_DAYS,
    overwrite: bool = False,
    provenance: dict[str, Any] | None = None,
    min_conversions: int = 0,
) -> ModelMetadata:
    """Train on the earlier 80% of rows (by as-of time), check on the later 20%, export.

    Writes ``out_dir/<version>/model.onnx`` and ``metadata.json`` only after the ONNX
    model reproduces LightGBM on the holdout within 1e-4 (else ParityError, nothing
    written). ``num_threads`` is 1 by default: on a shared 2-core box OpenMP's spinning
    threads made two threads up to 10x slower than one.
    """
    target = Path(out_dir) / version
    if target.exists() and not overwrite:
        raise FileExistsError(f"model version {version!r} already exists at {target}")
    rows = list(snapshots(events, open_cutoff_days=open_cutoff_days))
    X, y, t = _arrays(rows)
    kinds = np.array([s.kind for s in rows])
    if int(y.sum()) < min_conversions:
        raise NotEnoughOutcomesError(
            f"the history has {int(y.sum())} conversions; a model of its own needs "
            f"{min_conversions} (until then the org is scored by the global model)"
        )
    tr, ho = _time_split(t, holdout_fraction)
    for name, idx in (("training", tr), ("holdout", ho)):
        if len(idx) == 0 or len(np.unique(y[idx])) < 2:
            raise ValueError(f"the {name} set needs both converted and other leads")

    params = lightgbm_params(
        num_leaves=num_leaves,
        learning_rate=learning_rate,
        min_data_in_leaf=min_data_in_leaf,
        seed=seed,
        num_threads=num_threads,
    )
    data = lgb.Dataset(X[tr], label=y[tr], feature_name=list(FEATURE_NAMES), free_raw_data=True)
    booster = lgb.train(params, data, num_boost_round=num_trees)

    model_bytes = to_onnx(booster, version)
    parity = check_parity(booster, model_bytes, X[ho])

    # Report the model as it will run: the ONNX probabilities.
    p_ho = onnx_probabilities(model_bytes, X[ho])
    metrics = evaluate(y[ho], p_ho)
    dispositioned = kinds[ho] != "open"
    metrics["auc_dispositioned"] = round(auc(y[ho][dispositioned], p_ho[dispositioned]), 4)
    metrics["train_auc"] = round(auc(y[tr], booster.predict(X[tr])), 4)
    metrics["train_positive_rate"] = round(float(y[tr].mean()), 4)
    metrics["holdout_from"] = str(t[ho].min()) + "Z"
    metrics["rows_by_kind"] = {
        k: int((kinds == k).sum()) for k in ("converted", "disqualified", "open")
    }
    # The reference is the model's training rows and its own (ONNX) scores on them.
    ref = reference(X[tr], onnx_probabilities(model_bytes, X[tr]), "training set (at training)")
    gain = booster.feature_importance(importance_type="gain")
    metrics["feature_importance_gain"] = {
        name: round(float(v), 2)
        for name, v in sorted(zip(FEATURE_NAMES, gain, strict=True), key=lambda kv: -kv[1])
    }

    meta = ModelMetadata(
        version=version,
        trained_at=datetime.now(UTC).isoformat(timespec="seconds"),
        feature_names=list(FEATURE_NAMES),
        metrics=metrics,
        params={
            **params,
            "num_trees": num_trees,
            "holdout_fraction": holdout_fraction,
            "open_cutoff_days": open_cutoff_days,
        },
        n_train=len(tr),
        n_holdout=len(ho),
        opset=_opset(model_bytes),
        parity_max_abs_diff=parity,
        label_policy=(
            "1 = first outcome LeadConverted, 0 = LeadDisqualified, features as of the "
            f"outcome from the state before it; open leads: 0 after {open_cutoff_days:g} "
            "days without an outcome (features as of created+cutoff), younger ones excluded"
        ),
        provenance=provenance or {},
        reference=ref,
    )
    _write(target, model_bytes, meta, overwrite=overwrite)
    return meta


def reference(X: np.ndarray, p: np.ndarray, source: str) -> dict[str, Any]:
    """Per feature and for the score: quantile bin edges and the training proportions.

    Features are binned as float32, the type the model reads; the score as the engine
    reports it (100 x P rounded to 0.1), so live values land in the same bins.
    """
    scores = [round(100.0 * float(v), 1) for v in p]

    def binned(values: list[float]) -> dict[str, list[float]]:
        edges = drift.reference_edges(values)
        props = drift.proportions(drift.bin_counts(values, edges))
        return {"edges": edges, "proportions": [round(v, 6) for v in props]}

    X = np.asarray(X, dtype=np.float32)
    return {
        "source": source,
        "rows": len(X),
        "features": {
            name: binned([float(v) for v in X[:, j]]) for j, name in enumerate(FEATURE_NAMES)
        },
        "score": binned(scores),
    }


def add_reference(version_dir: Path, events: Iterable[LeadEvent], source: str) -> dict[str, Any]:
    """Give an existing model (trained before references existed) its drift reference.

    Rebuilds the training rows from ``events`` with the model's own split settings and
    scores them with its own model.onnx; only ``reference`` in metadata.json changes.
    ``source`` says where ``events`` came from; a row count differing from the model's
    ``n_train`` is added to it, since the rows are then not exactly its training set.
    """
    version_dir = Path(version_dir)
    meta_path = version_dir / "metadata.json"
    meta = json.loads(meta_path.read_text())
    params = meta.get("params", {})
    X, _y, t = build_dataset(
        events, open_cutoff_days=float(params.get("open_cutoff_days", OPEN_CUTOFF_DAYS))
    )
    tr, _ho = _time_split(t, float(params.get("holdout_fraction", 0.2)))
    if meta.get("n_train") != len(tr):
        source += f" (approximate: {len(tr)} rows, the model trained on {meta.get('n_train')})"
    p = onnx_probabilities((version_dir / "model.onnx").read_bytes(), X[tr])
    meta["reference"] = reference(X[tr], p, source)
    tmp = meta_path.with_name(f".{meta_path.name}.tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, meta_path)  # never a half-written metadata.json
    return dict(meta["reference"])


def add_reference_from_provenance(version_dir: Path, dsn: str | None = None) -> dict[str, Any]:
    """``add_reference`` from the history the model was trained on, as its provenance says.

    A generated history is regenerated exactly (the generator is seeded); an event-store
    history is the store's current one, which may have grown since training.
    """
    meta = json.loads((Path(version_dir) / "metadata.json").read_text())
    prov = meta.get("provenance", {})
    if prov.get("generator") == "leadscore.workload.generate":
        from leadscore.workload import generate

        args = {k: int(prov[k]) for k in ("orgs", "leads", "events", "seed")}
        source = "training set, regenerated: leadscore.workload.generate(" + ", ".join(
            f"{k}={v}" for k, v in args.items()
        )
        return add_reference(version_dir, generate(**args), source + ")")
    if prov.get("source") == "event store" and dsn is not None:
        from leadscore.eventstore import open_store
        from leadscore.history import lead_events

        org = prov.get("org")
        store = open_store(dsn, cache_size=0)
        try:
            events = lead_events(store, None if org in (None, "(all orgs)") else org)
            return add_reference(version_dir, events, f"event store history of {org}, now")
        finally:
            store.close()
    raise ValueError(f"{version_dir}: cannot rebuild the training set from provenance {prov}")


def _write(target: Path, model_bytes: bytes, meta: ModelMetadata, *, overwrite: bool) -> None:
    """Write both files into a temporary sibling, then move it in: all or nothing."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; a model directory is for everyone to read
        (tmp / "model.onnx").write_bytes(model_bytes)
        (tmp / "metadata.json").write_text(json.dumps(asdict(meta), indent=2) + "\n")
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

    The same replay and labelling as any history (module docstring): features as of each
    lead's state before its outcome, a time-based split. An org needs ``min_conversions``
    conversions for a model of its own; the global model has no minimum.
    """
    from leadscore.eventstore import open_store
    from leadscore.history import lead_events

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
    from leadscore.workload import generate

    stream: Iterable[LeadEvent] = generate(orgs, leads, events, seed=seed)
    provenance = {
        "generator": "leadscore.workload.generate",
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
