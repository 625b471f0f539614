"""The memory bench's in-process part: the Leads alone, measured at marks (no services)."""

from __future__ import annotations

from adapters.settings import Settings
from bench.memory import lead_sizes, pct, workload


def test_the_leads_are_measured_at_each_mark() -> None:
    ordered = workload(200, 2_000)
    assert len(ordered) == 2_200
    sizes = lead_sizes(Settings(batch_size=100), ordered, [200, 1_200, 2_200])
    assert [s.mark for s in sizes] == [200, 1_200, 2_200]
    for size in sizes:
        assert len(size.per_lead) == 200  # every lead known from the first mark on
        assert sum(size.per_lead) == size.mark  # each lead-event applied once
        assert 0 < size.busiest < size.mib * 2**20
    assert sizes[0].mib < sizes[1].mib < sizes[2].mib  # leads filling their state
    assert pct(sizes[0].per_lead, 0.9) == 1 and pct(sizes[2].per_lead, 0.5) >= 1
