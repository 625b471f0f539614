"""What an orchestrator asks a worker: is it alive (``/healthz``), may it take work
(``/readyz``), and its stop on SIGTERM within a stated time.

Liveness is the worker's event loop turning: a timer on the loop beats, and a loop that
has not beaten for ``stall_after`` seconds is stuck (the metrics server answers from its
own thread, so "it answers" alone proves nothing). Readiness is the consumer holding
partitions and the event store answering ``SELECT 1``; a stopping worker is not ready.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
import structlog

log = structlog.get_logger(__name__)

# A loop that has not turned for this long is stuck: restart the process.
STALL_AFTER_SECONDS = 60.0
# The store is asked at most this often; scrapes in between get the last answer.
STORE_CHECK_EVERY_SECONDS = 2.0
# Exit code of a stop that ran out of time: its batch is uncommitted and will be redelivered.
EX_SHUTDOWN_TIMEOUT = 70

Probe = Callable[[], tuple[bool, dict[str, Any]]]


def pg_reachable(dsn: str, timeout_s: int = 2) -> Callable[[], None]:
    """A check that raises unless PostgreSQL at ``dsn`` answers ``SELECT 1`` in time."""

    def check() -> None:
        with psycopg.connect(dsn, connect_timeout=timeout_s, autocommit=True) as conn:
            conn.execute("SELECT 1")

    return check


class WorkerProbes:
    """The state behind ``/healthz`` and ``/readyz``; written from the worker's event
    loop, read from the metrics server's threads."""

    def __init__(
        self,
        store_check: Callable[[], None],
        *,
        stall_after: float = STALL_AFTER_SECONDS,
        check_every: float = STORE_CHECK_EVERY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store_check = store_check
        self._stall_after = stall_after
        self._check_every = check_every
        self._clock = clock
        self._beat = clock()  # starting counts as turning
        self._assigned: frozenset[Any] = frozenset()
        self._stopping = False
        self._lock = threading.Lock()
        self._store_ok = False
        self._store_error: str | None = None
        self._store_checked: float | None = None

    def beat(self) -> None:
        self._beat = self._clock()

    def assigned(self, partitions: Iterable[Any]) -> None:
        self._assigned = frozenset(partitions)

    def revoked(self, partitions: Iterable[Any]) -> None:
        self._assigned = self._assigned - frozenset(partitions)

    def stopping(self) -> None:
        self._stopping = True

    def live(self) -> tuple[bool, dict[str, Any]]:
        since = self._clock() - self._beat
        ok = since < self._stall_after
        return ok, {"live": ok, "loop_beat_age_s": round(since, 3)}

    def ready(self) -> tuple[bool, dict[str, Any]]:
        store_ok, error = self._store()
        checks = {
            "consumer_assigned": bool(self._assigned),
            "store_reachable": store_ok,
            "not_stopping": not self._stopping,
        }
        ok = all(checks.values())
        body: dict[str, Any] = {"ready": ok, "checks": checks, "partitions": len(self._assigned)}
        if error:
            body["store_error"] = error
        return ok, body

    def _store(self) -> tuple[bool, str | None]:
        with self._lock:
            now = self._clock()
            if self._store_checked is None or now - self._store_checked >= self._check_every:
                try:
                    self._store_check()
                except Exception as exc:  # any failure means not ready; the class says why
                    self._store_ok, self._store_error = False, type(exc).__name__
                else:
                    self._store_ok, self._store_error = True, None
                self._store_checked = now
            return self._store_ok, self._store_error


class ShutdownDeadline:
    """SIGTERM starts the clock: the worker has ``timeout_s`` seconds to stop cleanly.

    If it has not exited by then, the process ends with ``EX_SHUTDOWN_TIMEOUT`` without
    committing the batch in hand (as a crash would: Kafka redelivers it, and event ids
    make that harmless), so an orchestrator's kill after its own timeout never lands first.
    """

    def __init__(self, timeout_s: float, on_start: Callable[[], None] | None = None) -> None:
        self.timeout_s = timeout_s
        self._on_start = on_start
        self._started: float | None = None
        self._timer: threading.Timer | None = None

    @property
    def started(self) -> bool:
        return self._started is not None

    def start(self) -> None:
        if self._started is not None:
            return
        self._started = time.monotonic()
        log.info("stopping on signal", timeout_s=self.timeout_s)
        if self._on_start is not None:
            self._on_start()
        self._timer = threading.Timer(self.timeout_s, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self, default: float) -> float:
        """Seconds left before the deadline (``default`` while no stop was asked)."""
        if self._started is None:
            return default
        return max(0.0, self.timeout_s - (time.monotonic() - self._started))

    def elapsed(self) -> float:
        return 0.0 if self._started is None else time.monotonic() - self._started

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _expire(self) -> None:
        log.critical(
            "shutdown timed out; exiting without committing the batch in hand",
            timeout_s=self.timeout_s,
        )
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EX_SHUTDOWN_TIMEOUT)
