"""Followers of the notification log: their tracked positions and their elections.

Everything that follows the event store's log — the score-event relay, the webhook
dispatcher, the PostgreSQL read model — keeps how far it got in the ``tracking`` table
(this module owns it), and runs as one elected instance among the processes that host it.
The election is a PostgreSQL *session* advisory lock: held while the connection that took
it lives, so a process that dies loses it with its connection and another takes over.

Two clients, one vocabulary: the synchronous followers (relay, dispatcher, decay timer)
use ``Tracking`` and ``SessionLock`` on psycopg; the asynchronous ones (projections) use
the ``a*`` functions on an asyncpg connection, inside their own transactions, so a read
model's rows and its position commit together.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import psycopg
import structlog
from psycopg.sql import SQL, Identifier

from adapters.eventstore import DATABASE_UNAVAILABLE, LOG_CHANNEL, ddl_lock

log = structlog.get_logger(__name__)

TRACKING_DDL = (
    "CREATE TABLE IF NOT EXISTS tracking (name text PRIMARY KEY, position bigint NOT NULL)"
)
_TRY_LOCK = "SELECT pg_try_advisory_lock(hashtext(%s))"
_UNLOCK = "SELECT pg_advisory_unlock(hashtext(%s))"


def try_lock(conn: psycopg.Connection[Any], key: str) -> bool:
    """Take the session lock ``key`` on ``conn`` if no other session holds it."""
    row = conn.execute(_TRY_LOCK, (key,)).fetchone()
    return bool(row and row[0])


class Tracking:
    """One follower's position, on a connection of its own that also holds its election."""

    def __init__(self, dsn: str, name: str, *, lock_key: str) -> None:
        self.name = name
        self.dsn = dsn
        self.lock_key = lock_key
        self.conn = psycopg.connect(dsn, autocommit=True)
        with ddl_lock(dsn):
            self.conn.execute(TRACKING_DDL)

    def reconnect(self) -> None:
        """A new connection after the database went away (the lock went with the old one)."""
        try:
            self.conn.close()
        finally:
            try:
                self.conn = psycopg.connect(self.dsn, autocommit=True)
            except DATABASE_UNAVAILABLE as exc:
                log.warning("PostgreSQL still away", error=str(exc))

    def try_lock(self) -> bool:
        return try_lock(self.conn, self.lock_key)

    def get(self) -> int:
        row = self.conn.execute(
            "SELECT position FROM tracking WHERE name = %s", (self.name,)
        ).fetchone()
        return int(row[0]) if row else 0

    def set(self, position: int) -> None:
        self.conn.execute(
            "INSERT INTO tracking (name, position) VALUES (%s, %s) "
            "ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position",
            (self.name, position),
        )

    def close(self) -> None:
        self.conn.close()


class SessionLock:
    """An election without a position: at most one holder of ``name`` at a time."""

    def __init__(self, dsn: str, name: str) -> None:
        self.dsn = dsn
        self.name = name
        self._conn: psycopg.Connection[Any] | None = None
        self._held = False

    def held(self) -> bool:
        """Take the lock if free, or check this session still holds it."""
        try:
            if self._conn is None or self._conn.closed:
                self._held = False
                self._conn = psycopg.connect(self.dsn, autocommit=True)
            if self._held:
                self._conn.execute("SELECT 1")  # a dead session lost the lock
                return True
            self._held = try_lock(self._conn, self.name)
            if self._held:
                log.info("elected", lock=self.name)
            return self._held
        except psycopg.OperationalError:
            self.close()
            raise

    def close(self) -> None:
        self._held = False
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# -- waking on work ---------------------------------------------------------------------

# A follower at the head of the log sleeps until the store NOTIFYs new events, and reads
# anyway after this long (a notice lost with a connection costs at most this delay).
IDLE_READ_S = 1.0
_STOP_CHECK_S = 0.25  # how often a sleeping thread looks at its stop flag


class LogWaiter:
    """Sleeps until events are stored (the event store's NOTIFY on ``LOG_CHANNEL``).

    LISTEN starts on the first ``wait``, before the caller's next read, so a notice that
    arrives between a read and the following wait is queued, not lost. Notices from many
    commits are taken as one wake-up."""

    def __init__(self, dsn: str, channel: str = LOG_CHANNEL) -> None:
        self.dsn = dsn
        self.channel = channel
        self._conn: psycopg.Connection[Any] | None = None

    def listen(self) -> None:
        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(self.dsn, autocommit=True)
            conn.execute(SQL("LISTEN {}").format(Identifier(self.channel)))
            self._conn = conn

    def wait(self, stop: threading.Event, timeout: float | None = None) -> bool:
        """True when events were stored (or the listener was lost: maybe), False when
        ``timeout`` (``IDLE_READ_S``) passed without; returns early, False, once ``stop``
        is set."""
        timeout = IDLE_READ_S if timeout is None else timeout
        deadline = time.monotonic() + timeout
        try:
            if self._conn is None or self._conn.closed:
                self.listen()
                return True  # not listening until now: anything may have been stored
            assert self._conn is not None
            while not stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                woke = False
                for _ in self._conn.notifies(timeout=min(left, _STOP_CHECK_S), stop_after=1):
                    woke = True
                if woke:
                    # Take the other commits' notices queued meanwhile with this one.
                    for _ in self._conn.notifies(timeout=0.001):
                        pass
                    return True
            return False
        except psycopg.Error as exc:
            log.warning("log listener lost; reading on a timer until it is back", error=str(exc))
            self.close()
            stop.wait(min(timeout, _STOP_CHECK_S))
            return True

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None


Listener = Callable[..., None]


async def alisten(conn: asyncpg.Connection, woken: asyncio.Event) -> Listener:
    """Set ``woken`` whenever events are stored, until ``aunlisten`` (or ``conn`` ends)."""

    def wake(*_: object) -> None:
        woken.set()

    await conn.add_listener(LOG_CHANNEL, wake)
    return wake


async def aunlisten(conn: asyncpg.Connection, listener: Listener) -> None:
    if not conn.is_closed():
        with contextlib.suppress(Exception):
            await conn.remove_listener(LOG_CHANNEL, listener)


# -- asyncpg: the projections ----------------------------------------------------------


async def atry_lock(conn: asyncpg.Connection, key: str) -> bool:
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", key))


async def aunlock(conn: asyncpg.Connection, key: str) -> None:
    """Give the lock back if the connection still lives (a closed one already has)."""
    if not conn.is_closed():
        with contextlib.suppress(Exception):
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", key)


async def aposition(db: asyncpg.Pool | asyncpg.Connection, name: str) -> int:
    value = await db.fetchval("SELECT position FROM tracking WHERE name = $1", name)
    return int(value or 0)


async def aclaim(conn: asyncpg.Connection, name: str) -> int:
    """The position, its row locked until the transaction ends: writers serialise here."""
    value = await conn.fetchval(
        "INSERT INTO tracking (name, position) VALUES ($1, 0) "
        "ON CONFLICT (name) DO UPDATE SET position = tracking.position "
        "RETURNING position",
        name,
    )
    return int(value)


async def aset(conn: asyncpg.Connection, name: str, position: int) -> None:
    """Move to ``position``; never backwards (a late writer cannot undo a later one)."""
    await conn.execute(
        "INSERT INTO tracking (name, position) VALUES ($1, $2) ON CONFLICT (name) "
        "DO UPDATE SET position = greatest(tracking.position, EXCLUDED.position)",
        name,
        position,
    )


async def aforget(conn: asyncpg.Connection, name: str) -> None:
    """Back to the start of the log (a rebuild)."""
    await conn.execute(TRACKING_DDL)
    await conn.execute("DELETE FROM tracking WHERE name = $1", name)
