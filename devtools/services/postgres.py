"""A local PostgreSQL cluster for the run dir, plus per-test database helpers.

initdb and postgres refuse to run as root; as root they run as the ``postgres`` system
user, which must reach the data directory and the socket. A run dir inside a folder only
its owner may enter (a root home, a ``mktemp -d`` clone, both 0700) is out of its reach,
so as root the server's files live in a home of their own under ``/var/tmp``, one per run
dir (a hash of its path, so two clones never share a cluster), owned by postgres.
``/var/tmp`` rather than ``/run``: every user may enter it, and it keeps the data across
reboots (``/run`` is a tmpfs in memory). The pid file and the log stay in the run dir,
which also gets a symlink ``pg/server`` to that home. A cluster an older version made
inside the run dir stays where it is. Run as any other user, the server runs as that user
and everything stays in the run dir, which that user owns.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import pwd
import shutil
import signal
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from adapters.settings import Settings
from devtools.services import process
from devtools.services.private import SYSTEM_UMASK
from devtools.services.progress import Progress
from devtools.services.status import ServiceError, ServiceStatus

NAME = "postgres"
SUPERUSER = "postgres"
_READY_TIMEOUT = 60.0
_STOP_TIMEOUT = 60.0


# Where the server's files live when it runs as the postgres user (see the module doc).
SERVER_HOMES = Path("/var/tmp/leadscore-postgres")


@dataclass(frozen=True)
class Layout:
    root: Path  # in the run dir: pid file, log
    home: Path  # the server's: data directory and socket (``root`` unless run as postgres)

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def log(self) -> Path:
        return self.root / "log" / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        return self.home / "sock"

    @property
    def pidfile(self) -> Path:
        return self.root / "postgres.pid"

    @property
    def link(self) -> Path:
        """A symlink in the run dir to ``home`` when that is elsewhere."""
        return self.root / "server"


def layout(settings: Settings) -> Layout:
    root = settings.run_path / "pg"
    return Layout(root, server_home(root))


def server_home(root: Path) -> Path:
    """Where the data directory and socket of the cluster for ``root`` live."""
    if os.geteuid() != 0 or (root / "data" / "PG_VERSION").exists():
        return root
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return SERVER_HOMES / digest


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    user: str
    password: str
    dbname: str


def target(dsn: str) -> Target:
    params = conninfo_to_dict(dsn)
    return Target(
        host=str(params.get("host") or "127.0.0.1"),
        port=int(params.get("port") or 5432),
        user=str(params.get("user") or "leadscore"),
        password=str(params.get("password") or ""),
        dbname=str(params.get("dbname") or params.get("user") or "leadscore"),
    )


def status(settings: Settings) -> ServiceStatus:
    paths = layout(settings)
    t = target(settings.pg_dsn)
    return process.service_status(
        NAME, f"{t.host}:{t.port}", t.host, t.port, paths.pidfile, str(paths.data), paths.data
    )


def start(settings: Settings, progress: Progress) -> int:
    """Initialise the cluster if needed and launch postgres; return its pid without waiting."""
    t = target(settings.pg_dsn)
    if t.host not in process.LOOPBACK:
        raise ServiceError(f"PostgreSQL at {t.host}:{t.port} is not local and does not answer")
    paths = layout(settings)
    bindir = _bindir(progress)
    user = _service_user()
    paths.log.parent.mkdir(parents=True, exist_ok=True)
    if paths.home != paths.root:
        _make_server_home(paths)
    for d in (paths.data, paths.socket_dir):
        d.mkdir(parents=True, exist_ok=True)
    if user is not None:
        _hand_over(paths.home, user)
    paths.data.chmod(0o700)  # postgres refuses a group- or world-readable data directory
    if not (paths.data / "PG_VERSION").exists():
        with progress.step(f"initdb {paths.data}"):
            process.run_checked(
                [
                    bindir / "initdb", "-D", paths.data, "-U", SUPERUSER,
                    "--encoding=UTF8", "--locale=C.UTF-8",
                    # Never trust: _write_auth replaces these lines before the first start.
                    "--auth-local=peer", "--auth-host=scram-sha-256",
                ],
                what="initdb",
                cwd=paths.home,
                user=user,
                timeout=120.0,
            )  # fmt: skip
    _write_config(settings, paths, user)
    _write_auth(paths, user)
    with progress.step("launching PostgreSQL"):
        return process.spawn_detached(
            [bindir / "postgres", "-D", paths.data],
            paths.log,
            paths.pidfile,
            cwd=paths.home,
            user=user,
        )


def wait(settings: Settings, pid: int | None, progress: Progress) -> None:
    """Wait for the server; when it is ours, create the role and database of the DSN."""
    t = target(settings.pg_dsn)
    paths = layout(settings)
    if pid is not None:
        with progress.step(f"PostgreSQL accepting connections on {t.host}:{t.port}"):
            process.wait_ready(
                "PostgreSQL", lambda: _ping(_admin_dsn(settings)), _READY_TIMEOUT, pid, [paths.log]
            )
        if _write_auth(paths, _service_user()):
            # A cluster an older version initialised (socket: trust), running since.
            with progress.step("PostgreSQL socket auth: peer for postgres, else scram"):
                _reload(_admin_dsn(settings))
        with progress.step(f"role {t.user} and database {t.dbname}"):
            try:
                _provision(_admin_dsn(settings), t)
            except psycopg.Error as exc:
                raise ServiceError(f"could not create {t.user}@{t.dbname}: {exc}") from exc
        api = target(settings.api_dsn)
        if api.user != t.user and (api.host, api.port) == (t.host, t.port):
            with progress.step(f"query API role {api.user}"):
                try:
                    _provision_login(_admin_dsn(settings), api)
                except psycopg.Error as exc:
                    raise ServiceError(f"could not create role {api.user}: {exc}") from exc
    with progress.step(f"PostgreSQL SELECT 1 as {t.user}@{t.dbname}"):
        try:
            with psycopg.connect(settings.pg_dsn, connect_timeout=10) as conn:
                conn.execute("SELECT 1").fetchone()
        except psycopg.Error as exc:
            hint = (
                ""
                if pid is not None
                else " (an external server: does it have this role and database?)"
            )
            raise ServiceError(
                f"PostgreSQL at {t.host}:{t.port} refuses {t.user}@{t.dbname}{hint}: {exc}"
            ) from exc


def stop(settings: Settings) -> bool:
    """Stop the server if we started it; True if something was stopped."""
    paths = layout(settings)
    # SIGINT is PostgreSQL's "fast" shutdown: it does not wait for idle clients to disconnect.
    return process.stop_owned(
        "PostgreSQL", paths.pidfile, str(paths.data), signal.SIGINT, _STOP_TIMEOUT
    )


def ensure_database(dsn_or_settings: Settings | str, dbname: str) -> str:
    """Create `dbname` if missing, owned by the DSN's role (leadscore); return a DSN for it.

    The role needs CREATEDB, which `up` grants to the leadscore role.
    """
    dsn = dsn_or_settings.pg_dsn if isinstance(dsn_or_settings, Settings) else dsn_or_settings
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [dbname]).fetchone()
        if exists is None:
            # Another test process may create it at the same moment.
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    return with_dbname(dsn, dbname)


def drop_database(dsn_or_settings: Settings | str, dbname: str) -> None:
    """Drop `dbname` if it exists, disconnecting its sessions."""
    dsn = dsn_or_settings.pg_dsn if isinstance(dsn_or_settings, Settings) else dsn_or_settings
    maintenance = dsn if target(dsn).dbname != dbname else with_dbname(dsn, "postgres")
    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
    with psycopg.connect(maintenance, autocommit=True, connect_timeout=10) as conn:
        for attempt in range(40):
            try:
                conn.execute(drop)
                return
            except psycopg.errors.InsufficientPrivilege:
                # A session our role may not end: an autovacuum worker analysing the
                # database (the event store asks for it after 1,000 inserts). It is done
                # in moments; a session of another user stays, and this raises.
                if attempt == 39:
                    raise
                time.sleep(0.25)


def with_dbname(dsn: str, dbname: str) -> str:
    """The same DSN pointing at another database, keeping URL form (asyncpg accepts only URLs)."""
    if dsn.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(dsn)
        return urlunsplit(parts._replace(path="/" + quote(dbname, safe="")))
    return make_conninfo(dsn, dbname=dbname)


def _admin_dsn(settings: Settings) -> str:
    t = target(settings.pg_dsn)
    return make_conninfo(
        host=str(layout(settings).socket_dir), port=t.port, user=SUPERUSER, dbname="postgres"
    )


def _ping(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def _reload(admin_dsn: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute("SELECT pg_reload_conf()")


def _provision(admin_dsn: str, t: Target) -> None:
    role, db = sql.Identifier(t.user), sql.Identifier(t.dbname)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [t.user]).fetchone() is None:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB").format(role))
        # Re-applied every time so the role always matches the DSN.
        conn.execute(
            sql.SQL("ALTER ROLE {} LOGIN CREATEDB PASSWORD {}").format(
                role, sql.Literal(t.password)
            )
        )
        if (
            conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [t.dbname]).fetchone()
            is None
        ):
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(db, role))


def _provision_login(admin_dsn: str, t: Target) -> None:
    """A role that may log in with its password and nothing more (the query API's): what
    it may read and write, the tables' owner grants (query_api/db_role.py)."""
    role = sql.Identifier(t.user)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [t.user]).fetchone() is None:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
        conn.execute(
            sql.SQL("ALTER ROLE {} LOGIN NOCREATEDB NOCREATEROLE PASSWORD {}").format(
                role, sql.Literal(t.password)
            )
        )


def _service_user() -> str | None:
    """initdb and postgres refuse to run as root: use the postgres system user then."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SUPERUSER)
    except KeyError as exc:
        raise ServiceError("running as root but there is no 'postgres' system user") from exc
    return SUPERUSER


def _make_server_home(paths: Layout) -> None:
    """Create the server's home under SERVER_HOMES and link it from the run dir.

    SERVER_HOMES sits in a directory every user may write to: it must be ours (root's) and
    writable by nobody else, or another user could have planted a home (or a symlink)
    for our server to use."""
    base = paths.home.parent
    with contextlib.suppress(FileExistsError):
        base.mkdir(parents=True)
        base.chmod(0o755)
    info = base.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
        raise ServiceError(
            f"{base} is not a directory owned by root and writable only by it; remove it"
        )
    paths.home.mkdir(mode=0o700, exist_ok=True)
    if not paths.link.is_symlink():
        paths.link.symlink_to(paths.home, target_is_directory=True)


def _hand_over(home: Path, user: str) -> None:
    account = pwd.getpwnam(user)
    for parent in home.resolve().parents:
        mode = parent.stat().st_mode
        if not (mode & stat.S_IXOTH or parent.stat().st_uid == account.pw_uid):
            raise ServiceError(
                f"{parent} is not traversable by the '{user}' user; choose a run dir it can reach"
            )
    # Not recursive: initdb and postgres create everything inside as that user already.
    for path in [home, *home.iterdir()]:
        os.chown(path, account.pw_uid, account.pw_gid, follow_symlinks=False)


def _bindir(progress: Progress) -> Path:
    found = _find_bindir()
    if found is not None:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ServiceError(
            "PostgreSQL server binaries not found; install PostgreSQL (initdb, postgres)"
        )
    with progress.step("apt-get install postgresql"):
        process.run_checked(
            ["apt-get", "update"], what="apt-get update", timeout=600.0, umask=SYSTEM_UMASK
        )
        process.run_checked(
            ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"],
            what="apt-get install postgresql",
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            timeout=900.0,
            umask=SYSTEM_UMASK,
        )
    found = _find_bindir()
    if found is None:
        raise ServiceError("apt-get installed postgresql but initdb is still not found")
    return found


def _find_bindir() -> Path | None:
    candidates: list[Path] = []
    if shutil.which("pg_config"):
        try:
            out = process.run_checked(["pg_config", "--bindir"], what="pg_config", timeout=10.0)
            candidates.append(Path(out.strip()))
        except ServiceError:
            pass
    # Debian keeps server binaries off PATH, one directory per major version; newest first.
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_major, reverse=True)
    candidates += [Path(d) for d in debian]
    for d in candidates:
        if (d / "initdb").exists() and (d / "postgres").exists():
            return d
    return None


def _major(bindir: str) -> int:
    try:
        return int(Path(bindir).parent.name)
    except ValueError:
        return 0


def _write_config(settings: Settings, paths: Layout, user: str | None) -> None:
    t = target(settings.pg_dsn)
    conf = {
        "listen_addresses": "'127.0.0.1'",
        "port": str(t.port),
        "unix_socket_directories": f"'{paths.socket_dir}'",
        # Sized for a 2-core, many-GiB dev box running Kafka and the engine beside it.
        "max_connections": "200",
        "shared_buffers": "256MB",
        "effective_cache_size": "2GB",
        "work_mem": "8MB",
        "maintenance_work_mem": "128MB",
        "wal_buffers": "16MB",
        "min_wal_size": "256MB",
        "max_wal_size": "2GB",
        "checkpoint_completion_target": "0.9",
        "random_page_cost": "1.1",
        "max_worker_processes": "4",
        "max_parallel_workers": "2",
        "max_parallel_workers_per_gather": "1",
        "timezone": "'UTC'",
        "log_timezone": "'UTC'",
        "log_line_prefix": "'%m [%p] %q%u@%d '",
        "log_min_duration_statement": "1000",
        # No personal data in the server's log (README, "Privacy"): a slow statement is
        # logged without its bind parameters, an error without the DETAIL that quotes
        # the row's values, and no statement text beside an error.
        "log_parameter_max_length": "0",
        "log_parameter_max_length_on_error": "0",
        "log_error_verbosity": "terse",
        "log_min_error_statement": "panic",
    }
    # Our settings live in their own file, rewritten each start; postgresql.conf only includes it.
    ours = paths.data / "leadscore.conf"
    ours.write_text("".join(f"{k} = {v}\n" for k, v in conf.items()))
    if user is not None:
        account = pwd.getpwnam(user)
        os.chown(ours, account.pw_uid, account.pw_gid)
    main = paths.data / "postgresql.conf"
    text = main.read_text()
    if "include_if_exists = 'leadscore.conf'" not in text:
        main.write_text(text + "\ninclude_if_exists = 'leadscore.conf'\n")


# Client authentication, rewritten on every start (and by `up` for a running server of
# ours): no connection is trusted. On the socket, only the OS user running the stack
# may be the superuser, by peer authentication (the bootstrap's admin connection, with no
# password to keep anywhere); every other role, there and on TCP, gives its password.
IDENT_MAP = "leadscore"
_HBA = f"""\
# Written by `leadscore services up` (devtools/services/postgres.py); edits are replaced.
# TYPE  DATABASE  USER        ADDRESS        METHOD
local   all       {SUPERUSER:<11} {"":<14} peer map={IDENT_MAP}
local   all       all                        scram-sha-256
host    all       all         127.0.0.1/32   scram-sha-256
host    all       all         ::1/128        scram-sha-256
"""


def _write_auth(paths: Layout, user: str | None) -> bool:
    """Write pg_hba.conf and pg_ident.conf; True if either changed (a running server must
    reload them)."""
    # The OS users who may connect as the superuser on the socket: whoever runs the
    # stack (root, or the user who owns the run dir), and the server's own user.
    os_users = sorted({pwd.getpwuid(os.geteuid()).pw_name, user or SUPERUSER})
    ident = "".join(f"{IDENT_MAP}  {name}  {SUPERUSER}\n" for name in os_users)
    changed = False
    for path, text in ((paths.data / "pg_hba.conf", _HBA), (paths.data / "pg_ident.conf", ident)):
        try:
            if path.read_text() == text:
                continue
        except FileNotFoundError:
            pass
        path.write_text(text)
        path.chmod(0o600)
        if user is not None:
            account = pwd.getpwnam(user)
            os.chown(path, account.pw_uid, account.pw_gid)
        changed = True
    return changed
