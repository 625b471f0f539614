"""The API's TrackedProjection hands the runner everything quarantine needs."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from projections.base import Projection
from query_api.projection_task import TrackedProjection


class Recording:
    """A projection that records what it is asked (the wrapper's contract, no store)."""

    name = "recording"

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    async def setup(self) -> None: ...
    async def position(self) -> int:
        return 0

    async def project(self, entries: Sequence[object]) -> None: ...
    async def advance(self, position: int) -> None:
        self.calls.append(("advance", position))

    async def reapply(self, entries: Sequence[object]) -> None:
        self.calls.append(("reapply", list(entries)))

    def is_data_error(self, exc: BaseException) -> bool:
        return isinstance(exc, ValueError)

    async def reset(self) -> None: ...
    async def close(self) -> None: ...


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
