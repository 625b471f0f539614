"""Shared value types for the local service stack."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

State = Literal["running(started by us)", "running(external)", "stopped"]
STARTED_BY_US: State = "running(started by us)"
EXTERNAL: State = "running(external)"
STOPPED: State = "stopped"


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    address: str
    state: State
    pid: int | None
    data_dir: Path

    @property
    def running(self) -> bool:
        return self.state != STOPPED


class ServiceError(RuntimeError):
    """A service could not be prepared, started, verified or stopped."""
