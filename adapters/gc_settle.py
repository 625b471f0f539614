"""The garbage collector of a long-lived process: settled once it is composed.

The worker, the relay, the projections process and the query API each call
``settle_gc()`` when they have loaded what they live with, and before the work starts.
"""

from __future__ import annotations

import gc
import time

from prometheus_client import Histogram

GC_PAUSE = Histogram(
    "leadscore_gc_pause_seconds",
    "Python garbage collections, by generation: each stops every thread of the process",
    ["generation"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
)


# A young collection after this many more allocations than deallocations (CPython's
# default is 700): measured in the worker at 2,000 lead-events/s for 20 s, 700 gave 1,659
# young, 150 middle and 13 full collections, 0.70 s in all and full ones of 25-50 ms as
# the aggregate cache grew; 20,000 gave 15 young and 1 middle (26 ms), 0.06 s in all.
GC_YOUNG_THRESHOLD = 20_000


def settle_gc() -> None:
    """Freeze what the process loaded to start (modules, the model, clients, pools), so
    that full collections no longer scan it; collect less often (GC_YOUNG_THRESHOLD); and
    time every collection into GC_PAUSE.

    Call once the process is composed, before the work starts. In the worker a full
    collection took 46 ms before (2 in a 20 s run at 500 lead-events/s; every thread
    stops for it, and the events in flight wait); in the query API a full
    collection took 22-26 ms before. Later allocations are collected as usual, less
    often.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)
    if any(getattr(cb, "_leadscore", False) for cb in gc.callbacks):
        return
    started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            GC_PAUSE.labels(str(info["generation"])).observe(time.perf_counter() - started[0])

    on_gc._leadscore = True  # type: ignore[attr-defined]
    gc.callbacks.append(on_gc)
