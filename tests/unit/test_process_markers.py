"""A pid file is ours only while its process still runs what we started (process.owned_pid)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.services import process
from devtools.services.schema_registry import _MARKER


@pytest.fixture
def old_registry(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A process whose command line is the one the registry had before the layout move."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "-m", "leadscore.registry"]
    )
    pidfile = tmp_path / "registry.pid"
    pidfile.write_text(str(proc.pid))
    yield proc.pid, pidfile
    proc.kill()
    proc.wait()


def test_a_registry_started_under_its_old_module_is_still_ours(
    old_registry: tuple[int, Path],
) -> None:
    pid, pidfile = old_registry
    assert process.owned_pid(pidfile, _MARKER) == pid


def test_a_pid_running_something_else_is_not_ours(old_registry: tuple[int, Path]) -> None:
    _pid, pidfile = old_registry
    assert process.owned_pid(pidfile, "devtools.schema_registry") is None
    assert not pidfile.exists()  # forgotten: a stale pid file must not name a stranger
