"""The shadow report's rank correlation: Spearman's, with tied scores sharing their rank.

Scores tie often (leads with the same profile and history get the same score), so the
ties are the case that matters: a correlation that ranks tied scores by their row order
depends on the order the database returns the rows in.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from adapters.model_registry import rank_correlation


def test_tied_scores_share_their_average_rank() -> None:
    # Average ranks: a -> 2, 2, 2, 4 and b -> 1.5, 1.5, 3.5, 3.5; their Pearson
    # correlation is 2 / sqrt(3 * 4). Ranking ties by position would give 1.0 here.
    a = [10.0, 10.0, 10.0, 80.0]
    b = [20.0, 20.0, 50.0, 50.0]
    assert rank_correlation(a, b) == pytest.approx(1 / math.sqrt(3))


def test_the_row_order_does_not_change_it() -> None:
    rng = np.random.default_rng(3)
    a = rng.integers(0, 5, 60).astype(float)  # five distinct scores: many ties
    b = a + rng.integers(0, 3, 60)
    expected = rank_correlation(a, b)
    assert expected is not None and 0.0 < expected < 1.0
    for _ in range(5):
        order = rng.permutation(60)
        assert rank_correlation(a[order], b[order]) == pytest.approx(expected)
    assert rank_correlation(a[::-1], b[::-1]) == pytest.approx(expected)
    assert rank_correlation(b, a) == pytest.approx(expected)


def test_without_ties_it_is_the_textbook_formula() -> None:
    rng = np.random.default_rng(7)
    a = rng.permutation(50).astype(float)
    b = rng.permutation(50).astype(float)
    n, d = 50, a - b  # distinct values 0..49: the values are their own ranks
    assert rank_correlation(a, b) == pytest.approx(1 - 6 * float(np.sum(d**2)) / (n * (n**2 - 1)))
    assert rank_correlation(a, a * 3 + 1) == pytest.approx(1.0)
    assert rank_correlation(a, -a) == pytest.approx(-1.0)


@pytest.mark.parametrize(
    ("a", "b"),
    [([], []), ([50.0], [60.0]), ([50.0, 50.0, 50.0], [1.0, 2.0, 3.0]), ([1.0, 2.0], [7.0, 7.0])],
)
def test_it_is_undefined_for_fewer_than_two_leads_or_one_score_for_all(
    a: list[float], b: list[float]
) -> None:
    assert rank_correlation(a, b) is None
