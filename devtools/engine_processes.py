"""The engine's own processes on this machine, for the demo, the tests and the benchmarks:
start a worker or the API as a child, wait until it is ready, stop it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from confluent_kafka import ConsumerGroupState
from confluent_kafka.admin import AdminClient

from adapters.settings import Settings


def start_worker(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "leadscore.cli", "worker"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ},
            start_new_session=True,
        )


def stop_worker(
    proc: subprocess.Popen[bytes], timeout: float = 30, sig: signal.Signals = signal.SIGTERM
) -> None:
    """Ask a process to stop (``sig``), then kill it if it has not within ``timeout``."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for_group(settings: Settings, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Return once the worker's consumer group is stable with partitions assigned."""
    admin = AdminClient(
        {
            **settings.kafka,
        }
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}")
        futures = admin.describe_consumer_groups([settings.consumer_group], request_timeout=5)
        try:
            group = futures[settings.consumer_group].result()
        except Exception:  # the group does not exist yet
            group = None
        if (
            group is not None
            and group.state == ConsumerGroupState.STABLE
            and any(m.assignment.topic_partitions for m in group.members)
        ):
            return
        time.sleep(0.5)
    raise TimeoutError("the worker did not join its consumer group in time")


def api_pidfile(s: Settings) -> Path:
    return s.run_path / "api.pid"


def start_api(s: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "leadscore.cli", "api"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ},
            start_new_session=True,
        )
    api_pidfile(s).write_text(str(proc.pid))
    return proc


def stop_api(s: Settings) -> bool:
    """Stop the API a demo left running (and only that one)."""
    pidfile = api_pidfile(s)
    if not pidfile.exists():
        return False
    pid = int(pidfile.read_text().strip() or 0)
    pidfile.unlink()
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"leadscore.cli" not in f.read():
                return False
        os.kill(pid, signal.SIGTERM)
    except (FileNotFoundError, ProcessLookupError):
        return False
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.2)
    return True


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    return False
