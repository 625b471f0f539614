"""Background work that restarts itself: the projections, the relay, webhooks, decay.

A ``Supervisor`` runs ``work(stop)`` in a daemon thread. If ``work`` raises anything,
or returns while ``stop`` is not set, it is started again after a backoff (doubling from
``base`` up to ``cap``, back to ``base`` once a run lasted ``healthy_after`` seconds).
Each task's state is the gauge ``leadscore_background_alive{task}`` (1 running, 0 waiting
to restart or stopped), ``leadscore_background_restarts_total{task}`` counts restarts,
and ``health()`` reports them all for the worker's ``/health`` (``serve_metrics``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, generate_latest

log = structlog.get_logger(__name__)

ALIVE = Gauge(
    "leadscore_background_alive",
    "1 while a supervised background task (projections, relay, webhooks, decay) runs; "
    "0 while it waits to restart after an error, or has stopped",
    ["task"],
)
RESTARTS = Counter(
    "leadscore_background_restarts_total",
    "Restarts of a supervised background task after an error or an unexpected end",
    ["task"],
)

Work = Callable[[threading.Event], None]


@dataclass
class TaskState:
    alive: bool = False
    restarts: int = 0
    last_error: str = ""  # the exception's class: messages may carry data
    last_error_at: float | None = None
    started_at: float | None = None
    failing: int = 0  # failures in a row (a run of ``healthy_after`` s starts them again)

    def ok(self, settle: float) -> bool:
        """Running, and not merely between two quick failures: after a failure, a task
        counts as up once its new run lasted ``settle`` seconds."""
        if not self.alive or self.started_at is None:
            return False
        return self.failing == 0 or time.monotonic() - self.started_at >= settle


class Supervisor:
    def __init__(
        self,
        name: str,
        work: Work,
        stop: threading.Event,
        *,
        base: float = 1.0,
        cap: float = 60.0,
        healthy_after: float = 60.0,
    ) -> None:
        self.name = name
        self.work = work
        self.stop = stop
        self.base = base
        self.cap = cap
        self.healthy_after = healthy_after
        self.state = TaskState()
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        ALIVE.labels(name).set(0)
        RESTARTS.labels(name)

    def start(self) -> Supervisor:
        self.thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)

    def _loop(self) -> None:
        delay = self.base
        while not self.stop.is_set():
            started = time.monotonic()
            self._set_alive(True, started)
            try:
                self.work(self.stop)
            except Exception as exc:
                self._failed(type(exc).__name__)
                log.exception("background task failed, restarting", task=self.name, wait=delay)
            else:
                if self.stop.is_set():
                    break
                self._failed("ended")
                log.error("background task ended unexpectedly, restarting", task=self.name)
            finally:
                self._set_alive(False, None)
            if time.monotonic() - started >= self.healthy_after:
                delay = self.base
                self.state.failing = 1
            if self.stop.wait(delay):
                break
            delay = min(self.cap, delay * 2)
            self.state.restarts += 1
            RESTARTS.labels(self.name).inc()
        self._set_alive(False, None)

    def _set_alive(self, alive: bool, started: float | None) -> None:
        self.state.alive = alive
        self.state.started_at = started
        ALIVE.labels(self.name).set(1 if alive else 0)

    def _failed(self, what: str) -> None:
        self.state.failing += 1
        self.state.last_error = what
        self.state.last_error_at = time.time()


def supervise(name: str, work: Work, stop: threading.Event, **backoff: float) -> Supervisor:
    """Start ``work`` under a Supervisor named ``name``."""
    return Supervisor(name, work, stop, **backoff).start()


SETTLE_SECONDS = 5.0


def health(
    tasks: Iterable[Supervisor],
    extra: dict[str, Any] | None = None,
    *,
    settle: float = SETTLE_SECONDS,
) -> dict[str, Any]:
    """Liveness and readiness of a process and its supervised tasks.

    ``live`` is true while the process answers; ``ready`` while every task is up (running,
    and for ``settle`` seconds since its last restart if it failed before).
    """
    report = {
        t.name: {
            "alive": t.state.ok(settle),
            "restarts": t.state.restarts,
            "last_error": t.state.last_error or None,
        }
        for t in tasks
    }
    ready = all(v["alive"] for v in report.values())
    return {
        "live": True,
        "ready": ready,
        "status": "ok" if ready else "degraded",
        "tasks": report,
        **(extra or {}),
    }


def serve_metrics(
    port: int,
    report: Callable[[], dict[str, Any]],
    addr: str = "127.0.0.1",
    probes: Mapping[str, Callable[[], tuple[bool, dict[str, Any]]]] | None = None,
) -> ThreadingHTTPServer:
    """Prometheus metrics on ``/metrics`` (and ``/``), and ``/health``, ``/health/live``,
    ``/health/ready`` as JSON: 200, or 503 when the answer is not ready. ``probes`` adds
    paths (``/healthz``, ``/readyz``) answered by a check: 200 when it passes, else 503."""
    extra = dict(probes or {})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the http.server API)
            path = self.path.split("?", 1)[0].rstrip("/")
            if path in extra:
                ok, body = extra[path]()
                self._send(200 if ok else 503, "application/json", json.dumps(body).encode())
            elif path in ("/health", "/health/ready", "/health/live"):
                body_obj = report()
                ok = body_obj["live"] if path == "/health/live" else body_obj["ready"]
                self._send(200 if ok else 503, "application/json", json.dumps(body_obj).encode())
            elif path in ("", "/metrics"):
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY))
            else:
                self._send(404, "text/plain", b"not found\n")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:  # scrapes are not worth a log line
            return

    server = ThreadingHTTPServer((addr, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
