"""settle_gc: what a process loaded to start is frozen out of full collections, and every
collection is timed into leadscore_gc_pause_seconds."""

from __future__ import annotations

import gc

from prometheus_client import REGISTRY

from adapters.gc_settle import GC_YOUNG_THRESHOLD, settle_gc


def _count(generation: str) -> float:
    value = REGISTRY.get_sample_value(
        "leadscore_gc_pause_seconds_count", {"generation": generation}
    )
    return value or 0.0


def test_settle_gc_freezes_startup_objects_and_times_collections() -> None:
    threshold = gc.get_threshold()
    try:
        loaded = [object() for _ in range(1000)]  # alive when the process settles
        settle_gc()
        frozen = gc.get_freeze_count()
        assert frozen >= len(loaded)
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD

        before = _count("2")
        gc.collect()
        assert _count("2") == before + 1

        settle_gc()  # a second call freezes again, and times each collection once
        before = _count("2")
        gc.collect()
        assert _count("2") == before + 1
        assert sum(getattr(cb, "_leadscore", False) for cb in gc.callbacks) == 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
