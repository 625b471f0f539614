"""`leadscore services` from a checkout in any folder its user owns, and a failed `up`.

A checkout inside a 0700 folder (a root home, a fresh ``mktemp -d``) once stopped `up`:
as root PostgreSQL runs as the postgres user, which could not reach the run dir. The
first test copies this working tree into such a folder and runs `services up` and `down`
there, as a user would; the others make `up` fail on purpose and check that it stops what
it started in that call, and only that.

Kafka is left out (``--only``): it runs as the invoking user in the run dir, so a 0700
folder never stood in its way, and a broker of its own costs a minute and a GiB on this
2-core machine. PostgreSQL is the service the folder broke; the registry (which stores
its schemas in that PostgreSQL) and Redis show the rest of the stack starting from the
same checkout. The failed-`up` cleanup is the same code for every service, Kafka included.

Every stack here listens on free ports of its own: the machine's shared services keep the
default ports, and `up` would reuse them.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
import redis
from rich.console import Console

from adapters.settings import PREFIX, ROOT, Settings, get_settings
from devtools import services
from devtools.services import postgres
from devtools.services.process import pid_alive, port_open, read_pid
from devtools.services.status import EXTERNAL, STARTED_BY_US, STOPPED

pytestmark = pytest.mark.integration

SERVICES = ("postgres", "registry", "redis")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """A folder as `mktemp -d` makes it: mode 0700, entered by its owner only."""
    path = Path(tempfile.mkdtemp(prefix="leadscore-private-"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _copy_checkout(dest: Path) -> None:
    """This working tree's files (tracked and new, not ignored), as a clone would have them."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file someone is deleting is not there
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def test_services_start_and_stop_from_a_checkout_in_a_0700_folder(private_dir: Path) -> None:
    checkout = private_dir / "leadscore"
    _copy_checkout(checkout)
    pg_port, redis_port, registry_port = _free_port(), _free_port(), _free_port()
    dsn = f"postgresql://leadscore:leadscore@127.0.0.1:{pg_port}/leadscore"
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    registry_url = f"http://127.0.0.1:{registry_port}"
    # The checkout's defaults (its run dir is checkout/.run), on ports of its own.
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    env |= {
        f"{PREFIX}PG_DSN": dsn,
        f"{PREFIX}REDIS_URL": redis_url,
        f"{PREFIX}SCHEMA_REGISTRY_URL": registry_url,
    }
    only = [arg for name in SERVICES for arg in ("--only", name)]

    def services_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "leadscore.cli", "services", *args],
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    run = checkout / ".run"
    server_home = postgres.server_home(run / "pg")  # where the cluster will live
    try:
        up = services_cli("up", *only)
        assert up.returncode == 0, up.stdout + up.stderr
        pids = {name: read_pid(run / _pidfile(name)) for name in SERVICES}
        assert all(pid is not None and pid_alive(pid) for pid in pids.values()), pids

        # PostgreSQL's files are where its server can reach them: as root (server run as
        # the postgres user) a home of their own, linked from the run dir; else the run dir.
        link = run / "pg" / "server"
        if os.geteuid() == 0:
            assert link.resolve() == server_home
            assert server_home.parent == postgres.SERVER_HOMES, server_home
            assert (server_home / "data" / "PG_VERSION").exists()
            assert f"-D {server_home / 'data'}" in _cmdline(pids["postgres"])
        else:
            assert not link.exists()
            assert (run / "pg" / "data" / "PG_VERSION").exists()

        # A real round trip through each.
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            conn.execute("CREATE TABLE probe (id int PRIMARY KEY, note text)")
            conn.execute("INSERT INTO probe VALUES (1, 'from a 0700 folder')")
            assert conn.execute("SELECT note FROM probe").fetchone() == ("from a 0700 folder",)
        with redis.Redis.from_url(redis_url) as client:
            client.set("probe", "yes")
            assert client.get("probe") == b"yes"
        subject = f"probe-{uuid.uuid4().hex[:8]}-value"
        schema = {"type": "record", "name": "Probe", "fields": [{"name": "id", "type": "int"}]}
        registered = _http_json(
            f"{registry_url}/subjects/{subject}/versions", {"schema": json.dumps(schema)}
        )
        fetched = _http_json(f"{registry_url}/schemas/ids/{registered['id']}")
        assert json.loads(fetched["schema"]) == schema

        down = services_cli("down", *only)
        assert down.returncode == 0, down.stdout + down.stderr
        for name, pid in pids.items():
            assert pid is not None and not pid_alive(pid), name
        for port in (pg_port, redis_port, registry_port):
            assert not port_open("127.0.0.1", port), port
    finally:
        services_cli("down", *only)
        if server_home != run / "pg":  # outside the folder, which the fixture removes
            shutil.rmtree(server_home, ignore_errors=True)


def _pidfile(name: str) -> str:
    return {"postgres": "pg/postgres.pid", "registry": "registry/registry.pid"}.get(
        name, f"{name}/{name}.pid"
    )


def _cmdline(pid: int | None) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _http_json(url: str, body: dict[str, str] | None = None) -> dict[str, object]:
    # The checkout's registry has the default (dev) credentials; writes need them.
    token = base64.b64encode(Settings().schema_registry_user_info.encode()).decode()
    request = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "Content-Type": "application/vnd.schemaregistry.v1+json",
            "Authorization": f"Basic {token}",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        result: dict[str, object] = json.loads(response.read())
    return result


@pytest.fixture
def own_stack(private_dir: Path) -> Iterator[Settings]:
    """Settings for a stack of its own, in a run dir inside a 0700 folder, on free ports."""
    s = replace(
        get_settings(),
        run_dir=str(private_dir / ".run"),
        pg_dsn=f"postgresql://leadscore:leadscore@127.0.0.1:{_free_port()}/leadscore",
        redis_url=f"redis://127.0.0.1:{_free_port()}/0",
        schema_registry_url=f"http://127.0.0.1:{_free_port()}",
    )
    try:
        yield s
    finally:
        services.down(s, SERVICES)


@pytest.fixture
def not_postgres(own_stack: Settings) -> Iterator[None]:
    """Something that is not PostgreSQL listening on the stack's PostgreSQL port: `up`
    takes it for an external server and finds it refuses every connection."""
    port = postgres.target(own_stack.pg_dsn).port
    listener = socket.create_server(("127.0.0.1", port))
    listener.settimeout(0.2)
    stopping = threading.Event()

    def refuse() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.close()

    thread = threading.Thread(target=refuse, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stopping.set()
        thread.join()
        listener.close()


def test_a_failed_up_stops_what_it_started_and_only_that(
    own_stack: Settings, not_postgres: None
) -> None:
    # Redis started by an earlier call: not this call's to stop.
    services.up(own_stack, ["redis"])
    redis_before = {s.name: s for s in services.status(own_stack)}["redis"]
    assert redis_before.state == STARTED_BY_US
    with redis.Redis.from_url(own_stack.redis_url) as client:
        client.set("kept", "yes")

    out = io.StringIO()
    with pytest.raises(services.ServiceError, match="PostgreSQL"):
        # PostgreSQL is "external" and refuses; the registry is launched by this call.
        services.up(own_stack, SERVICES, Console(file=out, width=200))
    said = out.getvalue()
    assert "launching the schema registry" in said, said
    assert "stopping the registry it started" in said, said
    assert "could not stop" not in said, said

    rows = {s.name: s for s in services.status(own_stack)}
    assert rows["registry"].state == STOPPED, rows["registry"]
    assert rows["postgres"].state == EXTERNAL  # the impostor, untouched
    assert rows["redis"].state == STARTED_BY_US and rows["redis"].pid == redis_before.pid
    with redis.Redis.from_url(own_stack.redis_url) as client:
        assert client.get("kept") == b"yes"


def test_a_service_that_cannot_start_stops_the_ones_started_before_it(
    own_stack: Settings,
) -> None:
    # Redis at an address that is not this machine's cannot be started here: its start
    # fails after the registry's has launched (the order of the report: Kafka launched,
    # then PostgreSQL refused to start).
    failing = replace(own_stack, redis_url=f"redis://192.0.2.1:{_free_port()}/0")
    out = io.StringIO()
    started = time.monotonic()
    with pytest.raises(services.ServiceError, match="not local"):
        services.up(failing, ["registry", "redis"], Console(file=out, width=200))
    said = out.getvalue()
    assert "launching the schema registry" in said, said
    assert "stopping the registry it started" in said, said
    assert "could not stop" not in said, said
    registry = {s.name: s for s in services.status(failing)}["registry"]
    assert registry.state == STOPPED, registry
    assert time.monotonic() - started < 60
