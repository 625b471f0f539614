"""A model's drift reference: the training set's feature and score distributions, which
the drift monitor (adapters/drift.py) compares live traffic with.

``train`` writes it with every new model; ``add_reference`` gives one to a model trained
before references existed, rebuilding its training rows from the history its provenance
names (``add_reference_from_provenance``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from adapters.drift import reference
from adapters.training_rows import HORIZON_DAYS, time_split
from domain.events import LeadEvent
from domain.featurespec import DEFAULT_SPEC, FeatureSpec
from leadscore.training import build_dataset, onnx_probabilities

# Models made before the generator moved to devtools/ name its old module.
GENERATOR_NAMES = ("devtools.workload.generate", "leadscore.workload.generate")


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
    spec = FeatureSpec.from_dict(meta["feature_spec"]) if meta.get("feature_spec") else DEFAULT_SPEC
    horizon = float(params.get("horizon_days", HORIZON_DAYS))
    X, _y, t = build_dataset(
        events,
        spec=spec,
        ages_days=None if params.get("ages_days") is None else tuple(params["ages_days"]),
        horizon_days=horizon,
    )
    tr, _ho, _start = time_split(t, horizon, float(params.get("holdout_fraction", 0.2)))
    if meta.get("n_train") != len(tr):
        source += f" (approximate: {len(tr)} rows, the model trained on {meta.get('n_train')})"
    p = onnx_probabilities((version_dir / "model.onnx").read_bytes(), X[tr])
    meta["reference"] = reference(X[tr], p, source, spec.names)
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
    if prov.get("generator") in GENERATOR_NAMES:
        from devtools.workload import generate

        args = {k: int(prov[k]) for k in ("orgs", "leads", "events", "seed")}
        source = "training set, regenerated: devtools.workload.generate(" + ", ".join(
            f"{k}={v}" for k, v in args.items()
        )
        return add_reference(version_dir, generate(**args), source + ")")
    if prov.get("source") == "event store" and dsn is not None:
        from adapters.eventstore import open_store
        from adapters.history import lead_events

        org = prov.get("org")
        store = open_store(dsn, cache_size=0)
        try:
            events = lead_events(store, None if org in (None, "(all orgs)") else org)
            return add_reference(version_dir, events, f"event store history of {org}, now")
        finally:
            store.close()
    raise ValueError(f"{version_dir}: cannot rebuild the training set from provenance {prov}")
