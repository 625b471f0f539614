"""What a projection is, and the runner that keeps each one following the log.

A projection applies log entries in order and records the position of the last
one it applied *atomically with what it wrote* (or writes idempotently by position),
so a restart or a redelivered batch converges to the same state.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import asyncpg
import structlog

from adapters import positions
from projections import quarantine
from projections.log import LogEntry, LogReader, table_exists

log = structlog.get_logger(__name__)

STATUS_DDL = """
CREATE TABLE IF NOT EXISTS projection_status (
    name text PRIMARY KEY,
    position bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
)
"""


async def ensure_status_table(pool: asyncpg.Pool) -> None:
    # Only when missing: even CREATE ... IF NOT EXISTS needs CREATE on the schema, which
    # the query API's role (it runs the ClickHouse projection) does not have.
    if await pool.fetchval("SELECT to_regclass('projection_status') IS NULL"):
        await pool.execute(STATUS_DDL)


DEFAULT_BATCH = 2000  # log entries per read and write, unless a projection says otherwise


class ProjectionBusyError(RuntimeError):
    """Another process holds the projection (it is running there)."""


class Projection(Protocol):
    """A read model that follows the notification log.

    At the head of the log the runner sleeps until the event store says it stored more
    (its NOTIFY; at most ``positions.IDLE_READ_S`` when nothing comes), then reads, but
    never sooner than ``linger_s`` (default: the runner's ``idle_wait``) after the last
    read such a wake-up began: the first entry after a quiet spell is read at once, a
    busy log once per ``linger_s``. Each read at the head is one write of the entries
    stored since the last one, so a store that prefers few large writes (ClickHouse)
    lingers longer. Behind the head it reads ``batch_size`` entries per write (default:
    the runner's), which such a store also sets larger.
    """

    name: str

    async def setup(self) -> None:
        """Create the read model's tables or keys if missing (idempotent)."""

    async def position(self) -> int:
        """Position of the last log entry applied (0 when none)."""

    async def project(self, entries: Sequence[LogEntry]) -> None:
        """Apply ``entries`` (ascending positions) and record the last position, atomically.

        Entries at or below the recorded position must change nothing.
        """

    async def advance(self, position: int) -> None:
        """Record ``position`` as applied without writing anything (an entry set aside)."""

    async def reapply(self, entries: Sequence[LogEntry]) -> None:
        """Write ``entries`` again whatever the recorded position, never regressing newer
        state (re-driving quarantined entries); the position does not move."""

    def is_data_error(self, exc: BaseException) -> bool:
        """Whether ``exc`` is about the entries written (not the store being unreachable)."""

    async def reset(self) -> None:
        """Drop the read model and its position, ready to rebuild from 0."""

    async def close(self) -> None: ...


class SinkUnavailableError(RuntimeError):
    """Every entry of a batch failed on its own: the store, not the entries, is at fault."""


# Never about the entry: the store or the network. The runner retries these with backoff.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
)


class ProjectionRunner:
    """Follows the log for a set of projections, one elected runner per projection.

    Election is a PostgreSQL advisory lock per projection name, held on a dedicated
    connection: with several workers, each read model still has one writer.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        projections: Sequence[Projection],
        *,
        batch_size: int | None = None,
        idle_wait: float = 0.05,
        on_failure: Callable[[BaseException], Awaitable[None]] | None = None,
    ) -> None:
        self.pool = pool
        # Told of each failure before the retry (the API re-grants its role when denied).
        self.on_failure = on_failure
        self.reader = LogReader(pool)
        self.projections = list(projections)
        self.batch_size = batch_size
        self.idle_wait = idle_wait
        self._status_ready = False
        self._log_ready = False  # the log's table exists (it is never dropped)

    def size_for(self, projection: Projection) -> int:
        """Entries per read and write: the runner's ``batch_size`` if it was given, else
        the projection's own (a store whose writes have a dear fixed cost wants bigger
        ones), else DEFAULT_BATCH."""
        if self.batch_size is not None:
            return self.batch_size
        return int(getattr(projection, "batch_size", DEFAULT_BATCH))

    async def catch_up(
        self,
        projection: Projection,
        until: int | None = None,
        on_progress: Callable[[int], None] | None = None,
        *,
        batches: int | None = None,
    ) -> int:
        """Apply everything after the projection's position (up to ``until``, at most
        ``batches`` reads); returns count."""
        if not self._log_ready:
            if not await table_exists(self.pool):
                return 0
            self._log_ready = True
        applied = 0
        size = self.size_for(projection)
        position = await projection.position()
        while (until is None or position < until) and batches != 0:
            if batches is not None:
                batches -= 1
            entries = await self.reader.read(position, size)
            # A short read reached the head of the log as it was read: the lag needs no
            # query (one a batch at a live rate, where batches are short).
            head = entries[-1].position if 0 < len(entries) < size else None
            if until is not None:
                entries = [e for e in entries if e.position <= until]
            if not entries:
                quarantine.LAG.labels(projection.name).set(0)
                break
            await self._project(projection, entries)
            position = entries[-1].position
            applied += len(entries)
            await self._report(projection.name, position)
            if head is None:
                head = await self.reader.head()
            quarantine.LAG.labels(projection.name).set(max(0, head - position))
            if on_progress:
                on_progress(position)
        return applied

    async def _project(self, projection: Projection, entries: Sequence[LogEntry]) -> None:
        """Write a batch; if the store refuses its data, write it in halves, and halves of
        the refused halves, down to single entries, and set aside (quarantine) the entries
        it still refuses, so one entry never stops the projection. Halving finds k bad
        entries of n in about 2·k·log2(n) writes, where entry by entry took n (ClickHouse
        pays a fixed cost per insert; a batch of 20,000 one by one took minutes).
        Connection errors propagate: ``follow`` retries them with backoff."""
        try:
            await projection.project(entries)
            return
        except Exception as exc:
            if not _is_data_error(projection, exc):
                raise
            log.warning(
                "projection batch refused, writing it in halves",
                projection=projection.name,
                entries=len(entries),
                first=entries[0].position,
                last=entries[-1].position,
                error_type=type(exc).__name__,
            )
        refused: list[tuple[LogEntry, Exception]] = []
        await self._halves(projection, entries, refused)
        if len(refused) == len(entries) and (len(entries) > 1 or not await _answers(projection)):
            for entry, _exc in refused:
                await quarantine.forget(self.pool, projection.name, entry.position)
            raise SinkUnavailableError(
                f"{projection.name}: every entry of the batch was refused "
                f"({type(refused[0][1]).__name__}); retrying the batch, not quarantining it"
            )
        for entry, exc in refused:
            quarantine.alert(projection.name, entry, exc)
        if refused and refused[-1][0] is entries[-1]:
            await projection.advance(entries[-1].position)

    async def _halves(
        self,
        projection: Projection,
        entries: Sequence[LogEntry],
        refused: list[tuple[LogEntry, Exception]],
    ) -> None:
        """Write each half of a refused batch (in log order); recurse into a half that is
        refused; quarantine a single entry that is."""
        if len(entries) == 1:
            try:
                await projection.project(entries)
            except Exception as exc:
                if not _is_data_error(projection, exc):
                    raise
                # Recorded before a later entry moves the position past this one.
                await quarantine.add(self.pool, projection.name, entries[0], exc)
                refused.append((entries[0], exc))
            return
        middle = len(entries) // 2
        for half in (entries[:middle], entries[middle:]):
            if len(half) > 1:
                try:
                    await projection.project(half)
                    continue
                except Exception as exc:
                    if not _is_data_error(projection, exc):
                        raise
            await self._halves(projection, half, refused)

    async def follow(self, projection: Projection, stop: asyncio.Event) -> None:
        """Elect, then keep the projection caught up until ``stop`` is set.

        A projection may never skip an entry, so any failure (a database restart, a
        store that is down) is logged and retried with backoff, re-electing first:
        the advisory lock goes with the connection that held it.
        """
        backoff = 0.5
        while not stop.is_set():
            try:
                await self._follow_elected(projection, stop)
                backoff = 0.5
            except Exception as exc:
                log.warning("projection retrying", projection=projection.name, error=repr(exc))
                if self.on_failure is not None:
                    await self.on_failure(exc)
                await _wait(stop, backoff)
                backoff = min(backoff * 2, 30.0)

    async def _follow_elected(self, projection: Projection, stop: asyncio.Event) -> None:
        await projection.setup()
        key = f"leadscore.projection.{projection.name}"
        async with self.pool.acquire() as lock_conn:
            while not stop.is_set():
                if await positions.atry_lock(lock_conn, key):
                    break
                await _wait(stop, 1.0)
            if stop.is_set():
                return
            log.info("projection elected", projection=projection.name)
            linger = getattr(projection, "linger_s", self.idle_wait)
            stored = asyncio.Event()  # set by the store's NOTIFY, on the lock's connection
            listener = await positions.alisten(lock_conn, stored)
            loop = asyncio.get_running_loop()
            woken_read = -linger  # when the last read that a store woke began
            try:
                while not stop.is_set():
                    stored.clear()  # before reading: what is stored meanwhile wakes us
                    # A short batch is the head of the log: sleep until more is stored,
                    # then read, at most once per linger: a busy log is written in
                    # linger's worth of entries, the first entry after a quiet spell at
                    # once. (The reads on the idle timer find nothing and do not count.)
                    at_head = await self.catch_up(projection, batches=1) < self.size_for(projection)
                    if at_head and await _woken(stored, stop, positions.IDLE_READ_S):
                        await _wait(stop, woken_read + linger - loop.time())
                        woken_read = loop.time()
            finally:
                await positions.aunlisten(lock_conn, listener)
                await positions.aunlock(lock_conn, key)

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(*(self.follow(p, stop) for p in self.projections))

    async def rebuild(
        self, projection: Projection, on_progress: Callable[[int], None] | None = None
    ) -> int:
        """Drop the read model and replay the whole log into it, holding its election lock."""
        key = f"leadscore.projection.{projection.name}"
        async with self.pool.acquire() as conn:
            if not await positions.atry_lock(conn, key):
                raise ProjectionBusyError(
                    f"projection {projection.name!r} is being run by another process "
                    "(a worker or the API); stop it before rebuilding"
                )
            try:
                await projection.reset()
                await projection.setup()
                return await self.catch_up(projection, on_progress=on_progress)
            finally:
                await positions.aunlock(conn, key)

    async def status(self) -> list[dict[str, object]]:
        """Each projection's position and lag behind the head of the log."""
        head = await self.reader.head() if await table_exists(self.pool) else 0
        out: list[dict[str, object]] = []
        for p in self.projections:
            position = await p.position()
            out.append({"name": p.name, "position": position, "head": head, "lag": head - position})
        return out

    async def _report(self, name: str, position: int) -> None:
        # For `leadscore projections status`; the projection's own store holds
        # the authoritative position.
        if not self._status_ready:
            await ensure_status_table(self.pool)
            self._status_ready = True
        await self.pool.execute(
            "INSERT INTO projection_status (name, position, updated_at) VALUES ($1, $2, now()) "
            "ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = now()",
            name,
            position,
        )


def _is_data_error(projection: Projection, exc: BaseException) -> bool:
    if isinstance(exc, CONNECTION_ERRORS):
        return False
    judge = getattr(projection, "is_data_error", None)
    return bool(judge(exc)) if judge is not None else False


async def _answers(projection: Projection) -> bool:
    try:
        await projection.position()
    except Exception:
        return False
    return True


async def _woken(event: asyncio.Event, stop: asyncio.Event, seconds: float) -> bool:
    """Wait for ``event`` (True), ``stop`` or ``seconds`` (False)."""
    waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
    return event.is_set() and not stop.is_set()


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    if seconds <= 0:
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
