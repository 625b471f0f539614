"""The ClickHouse projection running inside the API process (embedded chDB only).

chDB allows one process per data directory, so with the embedded default the API
process both follows the log into ClickHouse and answers analytics from the same client.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from projections.base import Projection, ProjectionRunner
from projections.log import LogEntry, LogReader, table_exists

log = structlog.get_logger(__name__)

RESTART_DELAY = 2.0
# Analytics may lag the log by this much when idle; polling faster costs an idle API
# several percent of a core (two queries and a thread hop per poll).
IDLE_WAIT = 0.5


class TrackedProjection:
    """Delegates to a projection and remembers the last position it applied.

    Readers (health, the analytics cache) ask this instead of the projection: asking
    the projection itself for its position while it writes is not safe for every
    implementation, and this costs nothing.
    """

    def __init__(self, inner: Projection) -> None:
        self.inner = inner
        self.name = inner.name
        self.applied = 0
        if hasattr(inner, "linger_s"):  # how long it waits at the head of the log
            self.linger_s: float = inner.linger_s
        if hasattr(inner, "batch_size"):  # entries per write behind the head
            self.batch_size: int = inner.batch_size

    async def setup(self) -> None:
        await self.inner.setup()

    async def position(self) -> int:
        position = await self.inner.position()
        self.applied = max(self.applied, position)
        return position

    async def project(self, entries: Sequence[LogEntry]) -> None:
        await self.inner.project(entries)
        if entries:
            self.applied = max(self.applied, entries[-1].position)

    async def advance(self, position: int) -> None:
        await self.inner.advance(position)
        self.applied = max(self.applied, position)

    async def reapply(self, entries: Sequence[LogEntry]) -> None:
        await self.inner.reapply(entries)

    def is_data_error(self, exc: BaseException) -> bool:
        # Without it the runner took every error for the store's fault and retried the
        # same batch forever: the ClickHouse projection the API runs could not quarantine.
        return self.inner.is_data_error(exc)

    async def reset(self) -> None:
        await self.inner.reset()
        self.applied = 0

    async def close(self) -> None:
        await self.inner.close()


@dataclass
class ProjectionTask:
    """Follows the log with one projection until closed; restarts it after a failure."""

    runner: ProjectionRunner
    projection: TrackedProjection
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    last_error: str | None = None
    restarts: int = 0

    def start(self) -> None:
        self.task = asyncio.create_task(
            self._supervise(), name=f"{self.projection.name}-projection"
        )

    async def _supervise(self) -> None:
        while not self.stop.is_set():
            try:
                await self.runner.follow(self.projection, self.stop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Analytics go stale, but the API stays up; /health shows the error.
                self.last_error = repr(exc)
                self.restarts += 1
                log.exception("projection failed; restarting", projection=self.projection.name)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), RESTART_DELAY)

    async def status(self) -> dict[str, Any]:
        pool = self.runner.pool
        head = await LogReader(pool).head() if await table_exists(pool) else 0
        position = self.projection.applied
        return {
            "name": self.projection.name,
            "running": self.task is not None and not self.task.done(),
            "position": position,
            "head": head,
            "lag": max(head - position, 0),
            "restarts": self.restarts,
            "last_error": self.last_error,
        }

    async def close(self) -> None:
        self.stop.set()
        if self.task is None:
            return
        try:
            await asyncio.wait_for(self.task, 10)
        except TimeoutError:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


def start_projection(
    pool: Any, projection: Projection, regrant: Callable[[], Awaitable[None]] | None = None
) -> ProjectionTask:
    """Start following the log. ``regrant`` gives the API's role its grants again
    (query_api/db_role.py), run when a read was denied: a table a worker created while
    the API started may have missed them."""
    runner = ProjectionRunner(
        pool, [], idle_wait=IDLE_WAIT, on_failure=_regranting(regrant) if regrant else None
    )
    task = ProjectionTask(runner, TrackedProjection(projection))
    task.start()
    return task


def _regranting(
    regrant: Callable[[], Awaitable[None]],
) -> Callable[[BaseException], Awaitable[None]]:
    async def on_failure(exc: BaseException) -> None:
        if not isinstance(exc, asyncpg.InsufficientPrivilegeError):
            return
        log.warning("the API's role was denied a read; granting it again", error=repr(exc))
        try:
            await regrant()
        except Exception as grant_error:  # retried at the next denial
            log.warning("granting the API's role failed", error=repr(grant_error))

    return on_failure
