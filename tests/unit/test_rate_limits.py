"""Token buckets (query_api/limits.py) on a clock the test turns."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from query_api.limits import TokenBuckets


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_one_token_per_interval_and_the_wait_until_the_next() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=2.0, burst=3, clock=clock)
    assert [buckets.take("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("k") == 0.5  # 2 a second: the next token in half a second
    assert buckets.take("other") == 0.0  # names do not share a bucket
    clock.now = 0.5
    assert buckets.take("k") == 0.0
    assert buckets.take("k") > 0
    clock.now = 100.0  # a long pause refills only up to the burst
    assert [buckets.take("k") for _ in range(4)][-1] > 0


def test_zero_rate_is_no_limit_and_the_table_is_bounded() -> None:
    assert TokenBuckets(rate=0, burst=1).take("k") == 0.0
    buckets = TokenBuckets(rate=1.0, burst=1, max_size=10, clock=Clock())
    for i in range(100):
        buckets.take(str(i))
    assert len(buckets._buckets) == 10


@given(
    rate=st.floats(min_value=0.1, max_value=1000),
    burst=st.integers(min_value=1, max_value=50),
    gaps=st.lists(st.floats(min_value=0, max_value=2), max_size=200),
)
def test_never_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: int, gaps: list[float]
) -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=rate, burst=burst, clock=clock)
    allowed = 0
    for gap in gaps:
        clock.now += gap
        allowed += buckets.take("k") == 0.0
    assert allowed <= burst + rate * clock.now + 1e-6
