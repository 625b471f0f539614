"""The worker's probes and its shutdown deadline (streams/probes.py), without servers."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request

import pytest

from streams.probes import EX_SHUTDOWN_TIMEOUT, ShutdownDeadline, WorkerProbes
from streams.supervise import serve_metrics


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Store:
    def __init__(self) -> None:
        self.up = True
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        if not self.up:
            raise ConnectionRefusedError("no")


def test_ready_needs_partitions_and_the_store_and_no_stop() -> None:
    clock, store = Clock(), Store()
    probes = WorkerProbes(store, clock=clock, check_every=2.0)
    ok, body = probes.ready()
    assert not ok and body["checks"] == {
        "consumer_assigned": False,
        "store_reachable": True,
        "not_stopping": True,
    }
    probes.assigned({("lead-events", 0), ("lead-events", 1)})
    ok, body = probes.ready()
    assert ok and body["partitions"] == 2
    probes.revoked({("lead-events", 0), ("lead-events", 1)})
    assert not probes.ready()[0]
    probes.assigned({("lead-events", 3)})
    assert probes.ready()[0]
    probes.stopping()
    ok, body = probes.ready()
    assert not ok and not body["checks"]["not_stopping"]


def test_the_store_is_asked_at_most_every_check_interval() -> None:
    clock, store = Clock(), Store()
    probes = WorkerProbes(store, clock=clock, check_every=2.0)
    probes.assigned({("t", 0)})
    assert probes.ready()[0]
    store.up = False
    clock.now += 1.0
    assert probes.ready()[0] and store.calls == 1  # the last answer, not asked again
    clock.now += 1.5
    ok, body = probes.ready()
    assert not ok and body["store_error"] == "ConnectionRefusedError" and store.calls == 2


def test_live_while_the_loop_beats() -> None:
    clock = Clock()
    probes = WorkerProbes(Store(), clock=clock, stall_after=60.0)
    assert probes.live()[0]
    clock.now += 59.0
    assert probes.live()[0]
    clock.now += 2.0
    ok, body = probes.live()
    assert not ok and body["loop_beat_age_s"] == 61.0
    probes.beat()
    assert probes.live()[0]


def get(port: int, path: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def test_the_metrics_server_answers_the_probes_where_it_is_bound() -> None:
    clock = Clock()
    probes = WorkerProbes(Store(), clock=clock)
    server = serve_metrics(
        0,
        lambda: {"live": True, "ready": True},
        "0.0.0.0",
        {"/healthz": probes.live, "/readyz": probes.ready},
    )
    try:
        host, port = server.server_address[:2]
        assert host == "0.0.0.0"
        assert get(port, "/healthz") == (200, {"live": True, "loop_beat_age_s": 0.0})
        status, body = get(port, "/readyz")
        assert status == 503 and body["ready"] is False
        probes.assigned({("t", 0)})
        assert get(port, "/readyz")[0] == 200
        clock.now += 120
        assert get(port, "/healthz")[0] == 503
    finally:
        server.shutdown()
        server.server_close()


def test_a_deadline_not_met_ends_the_process_with_its_code() -> None:
    script = textwrap.dedent(
        """
        import time
        from streams.probes import ShutdownDeadline
        ShutdownDeadline(0.5).start()
        time.sleep(30)
        """
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=20)
    assert done.returncode == EX_SHUTDOWN_TIMEOUT, done.stderr
    assert time.monotonic() - started < 15
    assert b"shutdown timed out" in done.stdout + done.stderr


def test_a_cancelled_deadline_lets_the_process_end_on_its_own() -> None:
    deadline = ShutdownDeadline(0.2)
    assert deadline.remaining(7.0) == 7.0
    deadline.start()
    assert 0.0 < deadline.remaining(7.0) <= 0.2
    deadline.cancel()
    time.sleep(0.4)  # the timer would have ended this test's process
    assert deadline.remaining(7.0) == pytest.approx(0.0)
