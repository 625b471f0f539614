"""The API's TrackedProjection hands the runner everything quarantine needs."""

from __future__ import annotations

import asyncio

from projections.base import Projection
from query_api.projection_task import TrackedProjection
from tests.support.projections import Recording


def test_quarantine_calls_reach_the_projection_and_move_its_position() -> None:
    inner = Recording()
    tracked = TrackedProjection(inner)  # type: ignore[arg-type]
    # Every method of the Projection protocol is there (it is not runtime_checkable).
    missing = [m for m in dir(Projection) if not m.startswith("_") and not hasattr(tracked, m)]
    assert missing == []
    assert tracked.is_data_error(ValueError("bad entry"))
    assert not tracked.is_data_error(ConnectionError("store down"))
    asyncio.run(tracked.advance(41))
    asyncio.run(tracked.reapply(["entry"]))
    assert inner.calls == [("advance", 41), ("reapply", ["entry"])]
    assert tracked.applied == 41
