"""Process, pid-file and port helpers shared by the service launchers."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from devtools.services.private import PRIVATE_UMASK
from devtools.services.status import (
    EXTERNAL,
    STARTED_BY_US,
    STOPPED,
    ServiceError,
    ServiceStatus,
)

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_ERROR_LINE = re.compile(r"\b(ERROR|FATAL|PANIC)\b|^Caused by:|Exception: ")

# Services are launched through a short-lived intermediate so that they become children of
# init, not of this Python process: they outlive the CLI, and nothing here has to reap them
# (no zombies when `down` runs in the process that ran `up`, as in tests). A shell would do
# the same, but a non-interactive shell starts background jobs with SIGINT ignored, which
# PostgreSQL and the JVM honour. The intermediate runs as us and drops to `user` only for the
# service: the Python running it may live where that user cannot read (e.g. under /root).
# Every service runs under umask 077: what it writes in the run dir is its user's alone.
_LAUNCHER = """
import subprocess, sys
user = sys.argv[3] or None
with open(sys.argv[1], "ab") as log:
    child = subprocess.Popen(
        sys.argv[4:], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True, user=user, group=user, extra_groups=[] if user else None,
        umask=int(sys.argv[2], 8),
    )
print(child.pid)
"""


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def split_host_port(address: str, default_port: int) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep:
        return address, default_port
    return host.strip("[]"), int(port)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # A zombie (exited, not yet reaped by its parent) still answers kill(pid, 0).
    return stat.rpartition(")")[2].split()[0] != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def owned_pid(pidfile: Path, marker: str) -> int | None:
    """The pid from our pid file if that process is alive and still the service we started.

    ``marker`` is a string its command line holds; several may be given, separated by
    ``|`` (a service whose module moved still knows the processes started before)."""
    pid = read_pid(pidfile)
    if pid is None:
        return None
    # After a reboot the pid may belong to an unrelated process: check what it runs.
    if pid_alive(pid) and any(m in cmdline(pid) for m in marker.split("|")):
        return pid
    pidfile.unlink(missing_ok=True)
    return None


def spawn_detached(
    cmd: Sequence[str | Path],
    log: Path,
    pidfile: Path,
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    user: str | None = None,
) -> int:
    """Start `cmd` in its own session, output appended to `log`; record and return its pid."""
    argv = [
        *(sys.executable, "-I", "-S", "-c", _LAUNCHER),
        *(str(log), f"{PRIVATE_UMASK:o}", user or ""),
        *map(str, cmd),
    ]
    out = subprocess.run(
        argv,
        cwd=cwd,
        env=dict(os.environ if env is None else env),
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise ServiceError(f"could not launch {cmd[0]}: {out.stderr.strip()}")
    pid = int(out.stdout.strip())
    pidfile.write_text(f"{pid}\n")
    return pid


def stop_pid(pid: int, sig: signal.Signals = signal.SIGTERM, timeout: float = 60.0) -> bool:
    """Signal `pid` and wait for it to exit; SIGKILL after `timeout`. True if it stopped cleanly."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    if wait_until(lambda: not pid_alive(pid), timeout):
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), 10.0)
    return False


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def tail(path: Path, lines: int = 30) -> str:
    """The end of a log, preceded by its last error lines, which a stack trace can push out."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    if not text:
        return f"(empty log {path})"
    end = text[-lines:]
    errors = [line for line in text[:-lines] if _ERROR_LINE.search(line)][-8:]
    head = [*errors, "..."] if errors else []
    return "\n".join([*head, *end])


def run_checked(
    cmd: Sequence[str | Path],
    *,
    what: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    user: str | None = None,
    timeout: float | None = None,
    umask: int = PRIVATE_UMASK,
) -> str:
    """Run a setup command to completion; raise ServiceError with its output tail on failure.

    It runs under umask 077 (its files are private) unless told otherwise: a package
    install passes ``private.SYSTEM_UMASK``."""
    try:
        out = subprocess.run(
            [str(c) for c in cmd],
            cwd=cwd,
            env=None if env is None else dict(env),
            user=user,
            group=user,
            extra_groups=[] if user else None,
            umask=umask,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(f"{what} timed out after {timeout:.0f}s") from exc
    except FileNotFoundError as exc:
        raise ServiceError(f"{what}: {exc}") from exc
    if out.returncode != 0:
        output = "\n".join((out.stdout + out.stderr).strip().splitlines()[-30:])
        raise ServiceError(f"{what} failed (exit {out.returncode}):\n{output}")
    return out.stdout


def wait_ready(
    name: str, check: Callable[[], bool], timeout: float, pid: int | None, logs: Sequence[Path]
) -> None:
    """Wait for `check`; fail fast if the process died, with the tail of its logs either way."""

    def ready_or_dead() -> bool:
        return check() or (pid is not None and not pid_alive(pid))

    if wait_until(ready_or_dead, timeout) and check():
        return
    reason = "exited" if pid is not None and not pid_alive(pid) else f"not ready in {timeout:.0f}s"
    tails = "\n".join(f"--- last lines of {log}:\n{tail(log)}" for log in logs)
    raise ServiceError(f"{name} {reason}\n{tails}")


def stop_owned(
    name: str,
    pidfile: Path,
    marker: str,
    sig: signal.Signals = signal.SIGTERM,
    timeout: float = 60.0,
) -> bool:
    """Stop the service of ``pidfile`` if we started it; True if something was stopped.

    Raises ServiceError when it ignored ``sig`` for ``timeout`` seconds (it is killed).
    """
    pid = owned_pid(pidfile, marker)
    if pid is None:
        return False
    if not stop_pid(pid, sig, timeout):
        raise ServiceError(f"{name} (pid {pid}) ignored {sig.name} for {timeout:.0f}s; killed")
    pidfile.unlink(missing_ok=True)
    return True


def service_status(
    name: str, address: str, host: str, port: int, pidfile: Path, marker: str, data_dir: Path
) -> ServiceStatus:
    """Started by us (our pid file names a live process), external (port answers) or stopped."""
    pid = owned_pid(pidfile, marker)
    if pid is not None:
        state = STARTED_BY_US
    elif port_open(host, port):
        state = EXTERNAL
    else:
        state = STOPPED
    return ServiceStatus(name, address, state, pid, data_dir)
