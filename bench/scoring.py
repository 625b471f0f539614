"""Scoring kernel: rows/s of the project's scorer at batch sizes 1, 64 and 1,024.

Peers on the same model in the same run: raw onnxruntime (a session with the same
options, no wrapper) and LightGBM's own predict. Target: at batch 1,024 the scorer
keeps >= 80% of raw onnxruntime's rows/s.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import lightgbm as lgb
import numpy as np
import onnxruntime as ort
from rich.console import Console

from adapters.modelstore import OnnxScorer
from bench.harness import RUNS, Spread, ratio, write_results
from devtools.workload import generate
from domain.features import FEATURE_NAMES
from leadscore.training import build_dataset, lightgbm_params, to_onnx

console = Console()
BATCHES = (1, 64, 1024)
SECONDS_PER_RUN = 1.0


def model(tmp: Path) -> tuple[lgb.Booster, OnnxScorer, bytes]:
    """A booster shaped like the committed model, and its ONNX export."""
    X, y, _t = build_dataset(generate(10, 5_000, 60_000, seed=7))
    params = lightgbm_params(
        num_leaves=15, learning_rate=0.08, min_data_in_leaf=40, seed=7, num_threads=1
    )  # the defaults of `leadscore train`
    booster = lgb.train(params, lgb.Dataset(X, label=y), num_boost_round=100)
    onnx_bytes = to_onnx(booster, "bench")
    version = tmp / "bench"
    version.mkdir()
    (version / "model.onnx").write_bytes(onnx_bytes)
    meta = {"version": "bench", "feature_names": list(FEATURE_NAMES), "trained_at": "bench"}
    (version / "metadata.json").write_text(json.dumps(meta))
    return booster, OnnxScorer(version), onnx_bytes


def rows_per_second(fn: Callable[[np.ndarray], object], X: np.ndarray) -> float:
    fn(X)  # warm up
    done, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < SECONDS_PER_RUN:
        fn(X)
        done += len(X)
    return done / elapsed


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, console.status("training the benchmark model"):
        booster, scorer, onnx_bytes = model(Path(tmp))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        rng = np.random.default_rng(3)
        pool, _y, _t = build_dataset(generate(5, 3_000, 30_000, seed=11))
        lines = [
            "| batch | scorer rows/s | raw onnxruntime rows/s | LightGBM predict rows/s "
            "| scorer / onnxruntime |",
            "|---|---|---|---|---|",
        ]
        for batch in BATCHES:
            X = np.ascontiguousarray(pool[rng.integers(0, len(pool), batch)], dtype=np.float32)
            ours, raw, lgbm = [], [], []
            for _ in range(RUNS):
                ours.append(rows_per_second(scorer.predict, X))
                raw.append(rows_per_second(lambda a: session.run(None, {name: a}), X))
                lgbm.append(rows_per_second(lambda a: booster.predict(a, num_threads=1), X))
            o, r, g = Spread.of(ours), Spread.of(raw), Spread.of(lgbm)
            lines.append(f"| {batch:,} | {o} | {r} | {g} | {ratio(o, r):.2f} |")
            console.print(lines[-1])
    body = "\n".join(lines) + (
        "\n\nOne thread each (the worker's setting on a shared 2-core box); the same model "
        "(100 trees, 15 leaves) for all three; rows drawn from generated lead histories."
    )
    console.print(f"written to {write_results('scoring', body)}")


if __name__ == "__main__":
    main()
