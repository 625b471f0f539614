"""The stream peers' clocks hold every event they count, however small the run.

The Faust batch peer (a0) once started its clock at its first batch and left that
batch's events out; when the first batch held the whole workload the span held no
events and bench/pipeline.py divided by zero (a flaky `make test`). One event makes that
condition certain: the first batch always holds it.
"""

from __future__ import annotations

import math

import pytest

from adapters.settings import Settings
from bench import pipeline, stack


@pytest.mark.parametrize("direct", [False, True], ids=["faust-loop", "direct-delivery"])
def test_faust_take_peer_times_a_workload_its_first_batch_holds(
    services: Settings, direct: bool
) -> None:
    wl = pipeline.prepare(services, 1, 1, 1)
    assert wl.events == 1 and services.batch_size > wl.events  # the first batch holds all
    try:
        rate, cpu_us = pipeline.run_faust_take(services, wl, direct=direct)
    finally:
        stack.delete_topics(services.kafka, [wl.topic])
    assert rate > 0 and math.isfinite(rate), rate
    assert cpu_us >= 0 and math.isfinite(cpu_us), cpu_us


pytestmark = pytest.mark.integration
