"""The local stack as a whole: bring every service up, report on it, take down what we started."""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from types import ModuleType

from rich.console import Console

from adapters.settings import Settings
from devtools.services import kafka, postgres, redis, schema_registry
from devtools.services.private import ensure_run_dir, private_umask
from devtools.services.progress import Progress
from devtools.services.status import STOPPED, ServiceError, ServiceStatus

# Kafka first: its JVM boots while PostgreSQL and Redis are being started. The schema
# registry keeps its schemas in PostgreSQL, so it comes after it (and is stopped before it).
SERVICES: dict[str, ModuleType] = {
    "kafka": kafka,
    "postgres": postgres,
    "registry": schema_registry,
    "redis": redis,
}


def _selected(only: Iterable[str] | None) -> list[str]:
    if only is None:
        return list(SERVICES)
    names = list(only)
    unknown = sorted(set(names) - set(SERVICES))
    if unknown:
        raise ServiceError(f"unknown service(s) {unknown}; known: {list(SERVICES)}")
    return [name for name in SERVICES if name in names]


@contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    # Parallel test sessions may all call up(); one at a time, the rest then find it running.
    # What up and down write in the run dir, and the services they start, make private
    # files (devtools/services/private.py).
    ensure_run_dir(settings.run_path)
    with private_umask(), (settings.run_path / "services.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def status(settings: Settings, only: Iterable[str] | None = None) -> list[ServiceStatus]:
    return [SERVICES[name].status(settings) for name in _selected(only)]


def up(
    settings: Settings, only: Iterable[str] | None = None, console: Console | None = None
) -> None:
    """Start what is not running, then return once every service answers for real.

    A server already listening on a service's port is reused as external. Services started
    here get pid files under the run dir, so `down` stops exactly those. When a service
    cannot be started or does not answer, the ones this call started are stopped again
    (those it found running are left alone) and the error is raised.
    """
    progress = Progress(console)
    started = time.monotonic()
    names = _selected(only)
    with _locked(settings):
        pids: dict[str, int | None] = {}
        launched: list[str] = []  # started by this call, in order
        try:
            for name in names:
                current = SERVICES[name].status(settings)
                if current.state == STOPPED:
                    launched.append(name)
                    pids[name] = SERVICES[name].start(settings, progress)
                else:
                    progress.note(f"{name} {current.state} on {current.address}")
                    pids[name] = current.pid
            for name in names:
                SERVICES[name].wait(settings, pids[name], progress)
        except BaseException:  # Ctrl-C included: nothing half-started is left behind
            _stop_launched(settings, launched, progress)
            raise
    progress.note(f"services up in {time.monotonic() - started:.1f}s")


def _stop_launched(settings: Settings, names: list[str], progress: Progress) -> None:
    """Stop what a failed `up` started, last first; report what cannot be stopped."""
    for name in reversed(names):
        # A start that failed before launching anything has no pid file: stop is a no-op.
        try:
            with progress.step(f"up failed: stopping the {name} it started"):
                SERVICES[name].stop(settings)
        except ServiceError as exc:
            progress.note(f"could not stop {name}: {exc}")


def down(
    settings: Settings, only: Iterable[str] | None = None, console: Console | None = None
) -> None:
    """Stop the services this run dir started; external servers are left alone."""
    progress = Progress(console)
    with _locked(settings):
        for name in reversed(_selected(only)):
            current = SERVICES[name].status(settings)
            if current.pid is None:
                progress.note(f"{name} {current.state}: nothing of ours to stop")
                continue
            with progress.step(f"stopping {name} (pid {current.pid})"):
                SERVICES[name].stop(settings)
