"""The wheel, installed for real: built with `pip wheel`, installed (not editable) in a fresh
venv outside the source tree, it starts its own services, runs the demo's smoke path and
a worker that stops cleanly on SIGTERM. Nothing of the checkout is on its path."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.settings import BUNDLE, ROOT
from tests.support.net import free_port

pytestmark = pytest.mark.e2e


def run(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path, timeout: float) -> str:
    done = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{cmd} exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def kafka_ports() -> int:
    """A port p with p, p+1 and p+2 free (the local Kafka's client, controller, TLS)."""
    for _ in range(50):
        port = free_port()
        if port + 2 > 65535:
            continue
        try:
            for p in (port + 1, port + 2):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise AssertionError("no three free ports in a row")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
        cwd=out,
        timeout=600,
    )
    (found,) = out.glob("leadscore-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("installed")
    assert ROOT not in home.parents
    run([sys.executable, "-m", "venv", str(home / "venv")], cwd=home, timeout=120)
    pip = str(home / "venv" / "bin" / "pip")
    run([pip, "install", "-q", str(wheel)], cwd=home, timeout=1200)
    return home / "venv"


@pytest.fixture(scope="module")
def env(venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The installed engine's own services on ports of their own; down at the end."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LEADSCORE_", "PYTHON"))}
    kafka, pg, redis, registry, api = kafka_ports(), free_port(), free_port(), free_port(), 0
    api = free_port()
    env = {
        **base,
        "PATH": f"{venv / 'bin'}:{base.get('PATH', '')}",
        "HOME": str(tmp_path_factory.mktemp("home")),
        "LEADSCORE_RUN_DIR": str(tmp_path_factory.mktemp("run")),
        "LEADSCORE_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka}",
        "LEADSCORE_PG_DSN": f"postgresql://leadscore:leadscore@127.0.0.1:{pg}/leadscore",
        "LEADSCORE_REDIS_URL": f"redis://127.0.0.1:{redis}/0",
        "LEADSCORE_SCHEMA_REGISTRY_URL": f"http://127.0.0.1:{registry}",
        "LEADSCORE_API_PORT": str(api),
    }
    leadscore = str(venv / "bin" / "leadscore")
    cwd = Path(env["HOME"])
    try:
        out = run([leadscore, "services", "up"], env=env, cwd=cwd, timeout=600)
        assert "services up" in out, out
        yield env
    finally:
        subprocess.run([leadscore, "demo", "--down"], env=env, cwd=cwd, timeout=120, check=False)
        subprocess.run([leadscore, "services", "down"], env=env, cwd=cwd, timeout=300, check=False)


def test_the_wheel_ships_its_data_and_nothing_of_the_checkout(venv: Path) -> None:
    python = str(venv / "bin" / "python")
    probe = (
        "import json, adapters, leadscore, streams.wire as w;"
        "from adapters.settings import Settings;"
        "s = Settings();"
        "print(json.dumps([leadscore.__file__, adapters.__file__, str(w.SCHEMA_DIR), s.model_dir,"
        " s.scoring_config_dir, s.feature_config_dir, s.run_dir]))"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LEADSCORE_", "PYTHON"))}
    out = run([python, "-c", probe], env=clean, cwd=venv, timeout=60)
    package, adapters, *dirs, run_dir = json.loads(out.strip().splitlines()[-1])
    site = Path(adapters).parent
    for module in (package, adapters):
        assert str(ROOT) not in module and "site-packages" in module, module
    for d in dirs:
        assert Path(d).is_relative_to(site / BUNDLE), d
    assert {p.name for p in Path(dirs[0]).glob("*.avsc")} >= {
        "lead_event.v1.avsc",
        "score_event.v1.avsc",
    }
    assert (Path(dirs[1]) / "v1" / "model.onnx").is_file()
    assert (Path(dirs[2]) / "default.yaml").is_file() and (Path(dirs[3]) / "default.yaml").is_file()
    assert not Path(run_dir).is_relative_to(site.parent), "the run dir is in site-packages"


def test_the_installed_demo_scores_and_serves(venv: Path, env: dict[str, str]) -> None:
    out = run(
        [
            str(venv / "bin" / "leadscore"),
            "demo",
            "--orgs", "2", "--leads", "100", "--events", "1000", "--rate", "0",
            "--timeout", "240",
        ],
        env=env,
        cwd=Path(env["HOME"]),
        timeout=600,
    )  # fmt: skip
    assert "the query API is running" in out, out[-3000:]
    assert "strongest factors" in out, out[-3000:]


def test_the_installed_worker_is_ready_and_stops_on_sigterm(
    venv: Path, env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [str(venv / "bin" / "leadscore"), "worker"],
            env={**env, "LEADSCORE_METRICS_PORT": str(port), "LEADSCORE_LOG_FORMAT": "json"},
            cwd=env["HOME"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        status = 0
        while time.monotonic() < deadline and worker.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                    status = r.status
            except (urllib.error.URLError, ConnectionError):
                status = 0
            if status == 200:
                break
            time.sleep(1)
        assert status == 200, log.read_text()[-3000:]
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0, log.read_text()[-3000:]
        assert '"worker stopped"' in log.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
