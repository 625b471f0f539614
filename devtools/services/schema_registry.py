"""The project's schema registry (`python -m devtools.schema_registry`) as a local service.

It keeps its schemas in PostgreSQL, so the stack starts it after PostgreSQL; it retries
its database connection while PostgreSQL is still coming up. A registry already
answering on the URL (ours from another run, a Confluent or Apicurio server) is reused.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from adapters.settings import ROOT, Settings, settings_env
from devtools.schema_registry.cli import address
from devtools.services import process
from devtools.services.progress import Progress
from devtools.services.status import ServiceError, ServiceStatus

NAME = "registry"
MODULE = "devtools.schema_registry"
# What its command line holds: the module, or the one it had before the layout move.
_MARKER = f"{MODULE}|leadscore.registry"
_READY_TIMEOUT = 150.0  # covers PostgreSQL's own start, which the registry waits for
_STOP_TIMEOUT = 30.0


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def log(self) -> Path:
        return self.root / "log" / "registry.log"

    @property
    def pidfile(self) -> Path:
        return self.root / "registry.pid"


def layout(settings: Settings) -> Layout:
    return Layout(settings.run_path / "registry")


def status(settings: Settings) -> ServiceStatus:
    paths = layout(settings)
    host, port = address(settings)
    return process.service_status(
        NAME, settings.schema_registry_url, host, port, paths.pidfile, _MARKER, paths.root
    )


def start(settings: Settings, progress: Progress) -> int:
    """Launch the registry process; return its pid without waiting."""
    host, port = address(settings)
    if host not in process.LOOPBACK:
        raise ServiceError(f"schema registry at {settings.schema_registry_url} does not answer")
    paths = layout(settings)
    paths.log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **settings_env(settings)}
    with progress.step("launching the schema registry"):
        return process.spawn_detached(
            [sys.executable, "-m", MODULE], paths.log, paths.pidfile, cwd=ROOT, env=env
        )


def wait(settings: Settings, pid: int | None, progress: Progress) -> None:
    with progress.step(f"schema registry GET {settings.schema_registry_url}/subjects"):
        process.wait_ready(
            "schema registry",
            lambda: ping(settings.schema_registry_url, settings.schema_registry_user_info),
            _READY_TIMEOUT,
            pid,
            [layout(settings).log],
        )


def ping(url: str, user_info: str = "") -> bool:
    """Whether a registry answers on ``url``; credentials sent in case reads need them."""
    request = urllib.request.Request(url.rstrip("/") + "/subjects")
    if user_info:
        token = base64.b64encode(user_info.encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return isinstance(json.loads(response.read()), list)
    except (OSError, urllib.error.URLError, ValueError):
        return False


def stop(settings: Settings) -> bool:
    """Stop the registry if we started it; True if something was stopped.

    A registry still starting (waiting for PostgreSQL) is killed: uvicorn holds SIGTERM
    until its start-up ends, which can be minutes, and it has nothing to flush yet (its
    schemas are in PostgreSQL). That is the registry a failed `up` stops.
    """
    pidfile = layout(settings).pidfile
    if process.owned_pid(pidfile, _MARKER) is not None and not ping(
        settings.schema_registry_url, settings.schema_registry_user_info
    ):
        return process.stop_owned("schema registry", pidfile, _MARKER, signal.SIGKILL, 10.0)
    return process.stop_owned("schema registry", pidfile, _MARKER, signal.SIGTERM, _STOP_TIMEOUT)
