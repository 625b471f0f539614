"""A projection with no store, for tests of what runs projections (the runner, the API's
task): it records the quarantine calls it is asked and remembers how far it read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class Recording:
    name = "recording"

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.read_to = 0

    async def setup(self) -> None: ...
    async def position(self) -> int:
        return self.read_to

    async def project(self, entries: Sequence[Any]) -> None:
        if entries:
            self.read_to = max(self.read_to, entries[-1].position)

    async def advance(self, position: int) -> None:
        self.calls.append(("advance", position))
        self.read_to = max(self.read_to, position)

    async def reapply(self, entries: Sequence[object]) -> None:
        self.calls.append(("reapply", list(entries)))

    def is_data_error(self, exc: BaseException) -> bool:
        return isinstance(exc, ValueError)

    async def reset(self) -> None:
        self.read_to = 0

    async def close(self) -> None: ...
