"""How good a score is on labelled rows: the numbers every training reports.

scikit-learn computes the standard metrics. A metric that cannot be computed on the
rows given (one class only) is ``None``, never NaN: metadata is JSON, and PostgreSQL's
jsonb has no NaN.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn import metrics as skm


def _both_classes(y: np.ndarray) -> bool:
    return len(y) > 0 and 0 < int(np.sum(y)) < len(y)


def auc(y: Any, p: Any) -> float | None:
    """ROC AUC (ties at average rank), or None without both classes."""
    y = np.asarray(y).astype(int)
    if not _both_classes(y):
        return None
    return float(skm.roc_auc_score(y, np.asarray(p, dtype=np.float64)))


def pr_auc(y: Any, p: Any) -> float | None:
    """Average precision: the area under the precision-recall curve."""
    y = np.asarray(y).astype(int)
    if not _both_classes(y):
        return None
    return float(skm.average_precision_score(y, np.asarray(p, dtype=np.float64)))


def log_loss(y: Any, p: Any) -> float | None:
    y = np.asarray(y).astype(int)
    if len(y) == 0:
        return None
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-15, 1 - 1e-15)
    return float(skm.log_loss(y, p, labels=[0, 1]))


def lift_at(y: Any, p: Any, fraction: float = 0.1) -> float | None:
    """Positive rate among the top ``fraction`` by score, over the overall positive rate."""
    y = np.asarray(y, dtype=np.float64)
    base = y.mean() if len(y) else 0.0
    if base == 0:
        return None
    k = max(1, math.ceil(fraction * len(y)))
    top = np.argsort(-np.asarray(p, dtype=np.float64), kind="mergesort")[:k]
    return float(y[top].mean() / base)


def calibration(y: Any, p: Any, bins: int = 10) -> list[dict[str, Any]]:
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


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


def evaluate(y: Any, p: Any, *, probabilities: bool = True) -> dict[str, Any]:
    """The quality numbers stored with every model and baseline.

    ``probabilities=False`` for scores that are not probabilities (a points model): only
    the ranking metrics (AUC, PR-AUC, lift) apply to them.
    """
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=np.float64)
    out: dict[str, Any] = {
        "auc": _r(auc(y, p)),
        "pr_auc": _r(pr_auc(y, p)),
        "lift_top_decile": _r(lift_at(y, p, 0.1), 3),
        "positive_rate": _r(float(np.mean(y))) if len(y) else None,
        "n": len(y),
    }
    if not probabilities:
        return out
    table = calibration(y, p)
    ece = sum(
        row["n"] * abs(row["mean_predicted"] - row["observed_rate"]) for row in table if row["n"]
    ) / max(1, len(y))
    out.update(
        log_loss=_r(log_loss(y, p)),
        brier=_r(float(skm.brier_score_loss(y, p))) if len(y) else None,
        ece=_r(float(ece)),
        mean_predicted=_r(float(np.mean(p))) if len(p) else None,
        calibration=table,
    )
    return out


def single_feature_aucs(
    X: np.ndarray,
    y: np.ndarray,
    names: list[str],
    missing: list[float | None] | None = None,
    min_class: int = 30,
) -> dict[str, float]:
    """Each feature alone as a score: its AUC, folded to >= 0.5 (direction does not
    matter to a tree), on every row, and on the rows where it is present alone when each
    class has ``min_class`` of them there: a field filled in for some leads only (a sales
    tag set after a call) is judged where it says something. ``missing[j]`` is column
    j's code for "missing" besides NaN (a categorical's 0)."""
    out: dict[str, float] = {}
    y = np.asarray(y).astype(int)
    if not _both_classes(y):
        return out
    for j, name in enumerate(names):
        col = np.asarray(X[:, j], dtype=np.float64)
        absent = np.isnan(col)
        if missing is not None and missing[j] is not None:
            absent |= col == missing[j]
        filled = np.where(np.isnan(col), np.nanmin(col) - 1 if (~np.isnan(col)).any() else 0, col)
        best = _folded(y, filled)
        present = ~absent
        if present.any() and min(int(y[present].sum()), int((1 - y[present]).sum())) >= min_class:
            best = max(best, _folded(y[present], filled[present]))
        out[name] = round(best, 4)
    return out


def _folded(y: np.ndarray, score: np.ndarray) -> float:
    a = float(skm.roc_auc_score(y, score))
    return max(a, 1.0 - a)
