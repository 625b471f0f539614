"""Distribution drift: reference bins from training, and the population stability index.

A reference is a list of cut points (``edges``) per variable. A value's bin is the
number of edges <= it, so ``len(edges) + 1`` bins: ``(-inf, e0), [e0, e1), ...,
[e_last, inf)``. Edges are training quantiles, deduplicated, so a count or a boolean
with few distinct values gets one bin per value rather than empty slivers.

PSI = sum over bins of (actual - expected) * ln(actual / expected), on proportions.
Every term is >= 0 (both factors have the same sign), so PSI >= 0 and 0 only for
identical proportions. Read it as: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25
significant shift (the usual credit-scoring rule of thumb).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Sequence

DEFAULT_BINS = 10
# Empty bins get this proportion instead of 0, so ln() stays finite: an empty bin that
# held 10% in training adds 0.1 * ln(0.1 / 1e-4) = 0.69, "significant" on its own.
EPSILON = 1e-4
STABLE_BELOW = 0.1
SIGNIFICANT_ABOVE = 0.25

# Where a missing (NaN) feature falls in the bins: below every value, at training and live.
MISSING_BIN = -1e30


def reference_edges(values: Iterable[float], bins: int = DEFAULT_BINS) -> list[float]:
    """Cut points at the training quantiles 1/bins ... (bins-1)/bins, deduplicated.

    Each edge is a training value (lower quantile), and the smallest value is never an
    edge, so every bin holds at least one training value: no bin is empty by design.
    """
    s = sorted(values)
    if not s:
        return []
    n = len(s)
    picked = {s[min(n - 1, math.ceil(i * n / bins))] for i in range(1, bins)}
    picked.discard(s[0])
    return sorted(picked)


def bin_of(value: float, edges: Sequence[float]) -> int:
    return bisect_right(edges, value)


def bin_counts(values: Iterable[float], edges: Sequence[float]) -> list[int]:
    """How many ``values`` fall in each of the ``len(edges) + 1`` bins."""
    counts = [0] * (len(edges) + 1)
    for v in values:
        counts[bisect_right(edges, v)] += 1
    return counts


def proportions(counts: Sequence[float]) -> list[float]:
    total = sum(counts)
    return [c / total for c in counts] if total else [0.0] * len(counts)


def psi(
    expected: Sequence[float], actual_counts: Sequence[float], epsilon: float = EPSILON
) -> float | None:
    """PSI of observed counts against expected proportions; None when nothing was observed."""
    if len(expected) != len(actual_counts):
        raise ValueError(f"{len(expected)} expected bins, {len(actual_counts)} observed")
    total = sum(actual_counts)
    if total <= 0:
        return None
    out = 0.0
    for e, c in zip(expected, actual_counts, strict=True):
        e, a = max(e, epsilon), max(c / total, epsilon)
        out += (a - e) * math.log(a / e)
    return out


def level(value: float | None) -> str | None:
    """The stated reading of a PSI value."""
    if value is None:
        return None
    if value < STABLE_BELOW:
        return "stable"
    return "moderate" if value <= SIGNIFICANT_ABOVE else "significant"
