"""The run dir is private, and the dev PostgreSQL trusts no connection (README,
"Security defaults").

The shared stack shows the files of every service; a stack of its own (PostgreSQL and
Redis, in a 0700 folder, on free ports) shows an older, looser run dir and a cluster
initialised with socket trust being fixed by the next `up`.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from adapters.settings import Settings, get_settings
from devtools import services
from devtools.services import postgres

pytestmark = pytest.mark.integration

SERVICE_DIRS = ("kafka", "pg", "redis", "registry")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _open_to_others(root: Path) -> list[str]:
    """Our files and directories under ``root`` that group or others may use."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            try:
                info = os.lstat(name)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(info.st_mode) or stat.S_ISSOCK(info.st_mode):
                continue
            if stat.S_IMODE(info.st_mode) & 0o077:
                found.append(f"{oct(stat.S_IMODE(info.st_mode))} {name}")
    return found


@pytest.fixture(scope="module")
def stack() -> Settings:
    s = get_settings()
    services.up(s)
    return s


@pytest.fixture
def own_stack() -> Iterator[Settings]:
    folder = Path(tempfile.mkdtemp(prefix="leadscore-files-"))
    s = replace(
        get_settings(),
        run_dir=str(folder / ".run"),
        pg_dsn=f"postgresql://leadscore:leadscore@127.0.0.1:{_free_port()}/leadscore",
        redis_url=f"redis://127.0.0.1:{_free_port()}/0",
    )
    home = postgres.layout(s).home
    try:
        yield s
    finally:
        services.down(s, ["postgres", "redis"])
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


def test_every_file_the_services_made_is_private(stack: Settings) -> None:
    run = stack.run_path
    assert stat.S_IMODE(run.stat().st_mode) == 0o700
    checked = [run / name for name in SERVICE_DIRS if (run / name).exists()]
    assert len(checked) == len(SERVICE_DIRS), checked
    assert sum(1 for d in checked for _ in d.rglob("*")) > 50  # real files: logs, data, config
    assert [f for d in checked for f in _open_to_others(d)] == []


def test_up_closes_a_run_dir_an_older_version_left_open(own_stack: Settings) -> None:
    run = own_stack.run_path
    (run / "redis" / "data").mkdir(parents=True)
    old = run / "redis" / "data" / "old.rdb"
    old.write_bytes(b"left by an older version")
    for path in (run, run / "redis", run / "redis" / "data"):
        path.chmod(0o755)
    old.chmod(0o644)

    services.up(own_stack, ["redis"])

    assert stat.S_IMODE(run.stat().st_mode) == 0o700
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
    written = list((run / "redis").rglob("*"))
    assert any(p.name == "redis.log" for p in written), written  # made by the server itself
    assert _open_to_others(run) == []


def _passwordless(s: Settings, *, socket_dir: Path | None = None, user: str = "leadscore") -> str:
    t = postgres.target(s.pg_dsn)
    host = str(socket_dir) if socket_dir is not None else t.host
    return make_conninfo(host=host, port=t.port, user=user, dbname=t.dbname)


def _refused(conninfo: str) -> str:
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect(conninfo, connect_timeout=10).close()
    return str(caught.value)


def test_postgres_refuses_a_connection_without_password(stack: Settings) -> None:
    sock = postgres.layout(stack).socket_dir
    assert "no password supplied" in _refused(_passwordless(stack, socket_dir=sock))
    assert "no password supplied" in _refused(_passwordless(stack))  # TCP on loopback
    # The superuser only by peer, as the OS user running the stack: not over TCP.
    assert "no password supplied" in _refused(_passwordless(stack, user="postgres"))
    # What the bootstrap uses still works, and so does every role with its password.
    with psycopg.connect(postgres._admin_dsn(stack), connect_timeout=10) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
    with psycopg.connect(stack.pg_dsn, connect_timeout=10) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_up_fixes_a_cluster_initialised_with_socket_trust(own_stack: Settings) -> None:
    services.up(own_stack, ["postgres"])
    paths = postgres.layout(own_stack)
    hba = paths.data / "pg_hba.conf"
    # As the older version's initdb left it (--auth-local=trust), reloaded.
    owner = hba.stat()
    hba.write_text("local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
    os.chown(hba, owner.st_uid, owner.st_gid)
    postgres._reload(postgres._admin_dsn(own_stack))
    trusted = _passwordless(own_stack, socket_dir=paths.socket_dir)
    with psycopg.connect(trusted, connect_timeout=10) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("leadscore",)

    services.up(own_stack, ["postgres"])  # the server keeps running: rewritten and reloaded

    assert "no password supplied" in _refused(trusted)
    assert "trust" not in hba.read_text()
    with psycopg.connect(own_stack.pg_dsn, connect_timeout=10) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    # ensure_database / drop_database (the tests' per-test databases) still work.
    dsn = services.ensure_database(own_stack, "probe_db")
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("probe_db",)
    services.drop_database(own_stack, "probe_db")
