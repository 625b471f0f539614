"""Explanations: cost and agreement of the engine's attribution against exact TreeSHAP.

The engine explains a score with a two-path (forward and reverse) attribution against a
reference lead, through the ONNX model in one batched call (domain/explain.py). The peer
is LightGBM's exact TreeSHAP (``pred_contrib``) on the same model and rows, in the same
run. Reported: leads explained per second for both, and how far they agree on what
matters: overlap of the top-3 features by magnitude, sign agreement on the engine's top
factors, and the rank correlation of the magnitudes over all features.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from scipy.stats import spearmanr

from bench.harness import RUNS, Spread, write_results
from bench.scoring import model
from devtools.workload import generate
from domain.explain import contributions
from domain.features import FEATURE_NAMES
from leadscore.training import build_dataset

console = Console()
SAMPLE = 1_000


def per_second(fn: object, n: int) -> float:
    started = time.perf_counter()
    fn()  # type: ignore[operator]
    return n / (time.perf_counter() - started)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, console.status("training the benchmark model"):
        booster, scorer, _onnx = model(Path(tmp))
        pool, _y, _t = build_dataset(generate(5, 3_000, 30_000, seed=11))
        rng = np.random.default_rng(5)
        X = np.ascontiguousarray(pool[rng.integers(0, len(pool), SAMPLE)], dtype=np.float32)
        rows = X.astype(np.float64).tolist()

        ours_rate, shap_rate = [], []
        for _ in range(RUNS):
            ours_rate.append(per_second(lambda: contributions(rows, scorer.predict), SAMPLE))
            shap_rate.append(
                per_second(lambda: booster.predict(X, pred_contrib=True, num_threads=1), SAMPLE)
            )
        ours = contributions(rows, scorer.predict)
        shap = booster.predict(X, pred_contrib=True, num_threads=1)[:, : len(FEATURE_NAMES)]

    overlap, signs, rho = [], [], []
    for (_ref, parts), exact in zip(ours, shap, strict=True):
        mine = np.array([parts.get(name, 0.0) for name in FEATURE_NAMES])
        top_mine = set(np.argsort(-np.abs(mine))[:3])
        top_exact = set(np.argsort(-np.abs(exact))[:3])
        overlap.append(len(top_mine & top_exact) / 3)
        for i in top_mine:
            if abs(mine[i]) >= 0.05 and exact[i] != 0:
                signs.append(float(np.sign(mine[i]) == np.sign(exact[i])))
        a, b = np.abs(mine), np.abs(exact)
        if np.ptp(a) and np.ptp(b):  # tied magnitudes (features at 0) share their rank
            rho.append(float(spearmanr(a, b).statistic))

    o, s = Spread.of(ours_rate), Spread.of(shap_rate)
    lines = [
        "| method | leads explained/s | ratio |",
        "|---|---|---|",
        f"| engine: two-path attribution via ONNX (one batched call) | {o} | "
        f"{o.median / s.median:.1f}x |",
        f"| peer: LightGBM exact TreeSHAP (pred_contrib) | {s} | 1.0x |",
        "",
        f"Agreement over {SAMPLE:,} leads (100-tree model, rows from generated histories):",
        f"top-3 features by magnitude shared with TreeSHAP {np.mean(overlap):.0%} on average; "
        f"sign agrees on {np.mean(signs):.0%} of the engine's top factors; Spearman rank "
        f"correlation of magnitudes over all features, median {np.median(rho):.2f}.",
        "",
        "The two answer different questions: TreeSHAP explains the log-odds against the "
        "training set's average lead; the engine explains score points against a lead of "
        "the same age we know nothing about, and its contributions add up exactly to the "
        "score difference. The engine explains only material changes (first score, grade or "
        "model change, a move of 5 points or more); smaller moves keep the last explanation.",
    ]
    body = "\n".join(lines)
    console.print(body)
    console.print(f"written to {write_results('explain', body)}")


if __name__ == "__main__":
    main()
