"""Training on an org's own data: the model against the ground truth and the baselines.

On the second world (devtools/world_custom.py: conversion follows an education company's
own fields and time on site; the B2B fields are noise), at full size, for several seeds:
the feature spec that `leadscore features suggest` proposes from the history, then
`train` (prediction points at every lead-event, a time split with a gap), against

* the peer: LightGBM trained directly on the generator's ground-truth drivers at the same
  prediction points, labels and split (what a model could know at best);
* the points model (fit + engagement, the HubSpot-style baseline) and a logistic
  regression on the same features, from the training report;
* the leaky variant (a sales tag that knows the outcome), which the guard must refuse.

A quality benchmark, not a speed one: the figures are AUCs on each seed's holdout, their
medians across seeds, and the model's AUC minus the peer's (the issue's bar: >= -0.02).
Sizes: LEADSCORE_BENCH_OWN_LEADS (20,000), LEADSCORE_BENCH_RUNS seeds (3).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
from rich.console import Console

from adapters.evaluation import auc
from adapters.training_rows import epoch_ms, time_split, training_rows
from bench.harness import RUNS, Spread, write_results
from devtools.world_custom import LEAK_ATTRIBUTE, CustomWorld, custom_world
from domain.featurespec import parse
from leadscore.featuresuggest import suggest
from leadscore.training import LeakageError, lightgbm_params, train

LEADS = int(os.environ.get("LEADSCORE_BENCH_OWN_LEADS", "20000"))
console = Console(stderr=True)


def ground_truth_auc(world: CustomWorld, horizon_days: float) -> float:
    rows = list(training_rows(world.events, [lambda lead, at: world.truth(lead.lead_id, at)]))
    y = np.array([r.label for r in rows])
    tr, ho, _start = time_split(epoch_ms(rows), horizon_days, 0.2)
    levels = {n: sorted({str(r.values[0][n]) for r in rows}) for n in world.truth_categorical}
    X = np.array(
        [
            [
                float(levels[n].index(str(r.values[0][n])))
                if n in levels
                else float(r.values[0][n])
                for n in world.truth_names
            ]
            for r in rows
        ],
        dtype=np.float32,
    )
    params = lightgbm_params(
        num_leaves=15, learning_rate=0.08, min_data_in_leaf=40, seed=7, num_threads=1
    )
    data = lgb.Dataset(
        X[tr], label=y[tr], feature_name=list(world.truth_names),
        categorical_feature=list(world.truth_categorical),
    )  # fmt: skip
    result = auc(y[ho], lgb.train(params, data, num_boost_round=100).predict(X[ho]))
    assert result is not None
    return result


def main() -> None:
    figures: dict[str, list[float]] = {k: [] for k in ("ours", "truth", "points", "logistic")}
    gaps: list[float] = []
    seconds: list[float] = []
    refused = 0
    for seed in range(1, RUNS + 1):
        console.print(f"seed {seed}: generating {LEADS:,} leads")
        world = custom_world(leads=LEADS, seed=seed)
        doc, _findings = suggest(world.events)
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            meta = train(world.events, version="own", out_dir=Path(out), spec=parse(doc))
            seconds.append(time.perf_counter() - started)
            m = meta.metrics
            figures["ours"].append(m["auc"])
            figures["points"].append(m["baselines"]["points"]["auc"])
            figures["logistic"].append(m["baselines"]["logistic"]["auc"])
            figures["truth"].append(ground_truth_auc(world, meta.params["horizon_days"]))
            gaps.append(figures["ours"][-1] - figures["truth"][-1])
            leaky = custom_world(leads=LEADS, seed=seed, leaky=True)
            leaky_doc, _ = suggest(leaky.events)
            assert any(f.get("attribute") == LEAK_ATTRIBUTE for f in leaky_doc.get("fields", []))
            try:
                train(leaky.events, version="leaky", out_dir=Path(out), spec=parse(leaky_doc))
            except LeakageError:
                refused += 1
        console.print(
            f"seed {seed}: ours {figures['ours'][-1]:.3f}, ground truth "
            f"{figures['truth'][-1]:.3f}, points {figures['points'][-1]:.3f}"
        )
    lines = [
        f"Second world, {LEADS:,} leads per seed, {RUNS} seeds; the spec `features suggest` "
        "proposes; holdout AUC (median, min, max across seeds).",
        "",
        "| model (same prediction points, labels and split) | holdout AUC |",
        "|---|---|",
        "| this engine: lead-events → feature spec → LightGBM → ONNX | "
        f"{_spread(figures['ours'])} |",
        f"| peer: LightGBM on the generator's ground truth | {_spread(figures['truth'])} |",
        f"| logistic regression on the same features | {_spread(figures['logistic'])} |",
        f"| points model (fit + engagement) | {_spread(figures['points'])} |",
        "",
        f"Engine minus peer: {_spread(gaps, 3)} (bar: >= -0.02). Leaky variant refused by the "
        f"guard in {refused} of {RUNS} seeds. Training time {_spread(seconds, 1)} s.",
    ]
    path = write_results("own-data", "\n".join(lines))
    console.print("\n".join(lines))
    console.print(f"results appended to {path}")


def _spread(values: list[float], digits: int = 3) -> str:
    s = Spread.of(values)
    return f"{s.median:.{digits}f} ({s.low:.{digits}f}–{s.high:.{digits}f})"


if __name__ == "__main__":
    main()
