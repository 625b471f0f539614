"""A single-node Apache Kafka (KRaft broker + controller) run from Maven Central jars."""

from __future__ import annotations

import base64
import hashlib
import shutil
import signal
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import structlog

from adapters.settings import Settings
from adapters.topics import TopicError, ensure_engine_topics, round_trip
from devtools.services import process
from devtools.services.kafka_tls import TlsFiles, ensure_tls_files
from devtools.services.progress import Progress
from devtools.services.status import ServiceError, ServiceStatus

# Pinned to the 3.x line on purpose: Kafka 4.0 removed the old protocol versions
# (e.g. pre-v3 Produce/Fetch, KIP-896) that aiokafka, and so Faust, still speak;
# see aio-libs/aiokafka#1085. Move to 4.x only once aiokafka supports it.
KAFKA_VERSION = "3.9.1"
NAME = "kafka"
SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
log = structlog.get_logger(__name__)
_FETCH_TIMEOUT = 900.0
_READY_TIMEOUT = 120.0
_STOP_TIMEOUT = 60.0
_JVM_OPTS = [
    "-Xms1g",
    "-Xmx1g",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
]


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def libs(self) -> Path:
        return self.root / "libs"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def config(self) -> Path:
        return self.root / "config"

    @property
    def server_properties(self) -> Path:
        return self.config / "server.properties"

    @property
    def pidfile(self) -> Path:
        return self.root / "kafka.pid"

    @property
    def log(self) -> Path:
        return self.logs / "kafka.out"

    @property
    def libs_marker(self) -> Path:
        return self.libs / ".kafka-version"

    @property
    def classpath(self) -> str:
        return f"{self.libs}/*"  # java expands the wildcard itself


def layout(settings: Settings) -> Layout:
    return Layout(settings.run_path / "kafka")


def _ports(settings: Settings) -> tuple[str, int, int]:
    first = settings.kafka_bootstrap.split(",")[0].strip()
    host, port = process.split_host_port(first, 9092)
    # The controller listens on the next port (9093 for the default 9092).
    return host, port, port + 1


def status(settings: Settings) -> ServiceStatus:
    paths = layout(settings)
    host, port, _ = _ports(settings)
    return process.service_status(
        NAME, f"{host}:{port}", host, port, paths.pidfile, str(paths.server_properties), paths.data
    )


def start(settings: Settings, progress: Progress) -> int:
    """Fetch, configure, format and launch the broker; return its pid without waiting."""
    host, _, _ = _ports(settings)
    if host not in process.LOOPBACK:
        raise ServiceError(f"Kafka at {settings.kafka_bootstrap} is not local and does not answer")
    paths = layout(settings)
    for d in (paths.data, paths.logs, paths.config):
        d.mkdir(parents=True, exist_ok=True)
    if not _libs_ready(paths):
        with progress.step(f"fetching Kafka {KAFKA_VERSION} jars from Maven Central"):
            _fetch_libs(paths)
    _write_config(settings, paths)
    wanted = _credential_mark(settings)
    formatted = (paths.data / "meta.properties").exists()
    if formatted and _read_mark(paths) != wanted:
        # The SCRAM credential is written into the metadata log when storage is
        # formatted; a dev broker formatted before it (or with another password) starts
        # over: its topics are scratch data, the event store is in PostgreSQL.
        log.warning(
            "Kafka storage has other credentials; formatting it again", data=str(paths.data)
        )
        shutil.rmtree(paths.data)
        paths.data.mkdir(parents=True)
        formatted = False
    if not formatted:
        with progress.step("formatting Kafka storage (KRaft)"):
            _format(paths, _scram_args(settings))
        _mark_path(paths).write_text(wanted)
        _mark_path(paths).chmod(0o600)
    with progress.step("launching Kafka"):
        return process.spawn_detached(
            [
                _java(),
                *_JVM_OPTS,
                f"-Dlog4j.configuration=file:{paths.config / 'log4j.properties'}",
                f"-Dkafka.logs.dir={paths.logs}",
                "-cp",
                paths.classpath,
                "kafka.Kafka",
                paths.server_properties,
            ],
            paths.log,
            paths.pidfile,
            cwd=paths.root,
        )


def wait(settings: Settings, pid: int | None, progress: Progress) -> None:
    """Wait until a produce/consume round trip succeeds, then create the engine's topics."""
    host, port, _ = _ports(settings)

    def answers() -> bool:
        if not process.port_open(host, port):
            return False
        try:
            round_trip(settings.kafka, timeout=10.0)
        except TopicError:
            return False
        return True

    paths = layout(settings)
    with progress.step(f"Kafka produce/consume round trip on {host}:{port}"):
        process.wait_ready(
            "Kafka", answers, _READY_TIMEOUT, pid, [paths.log, paths.logs / "server.log"]
        )
    names = [settings.topic_lead_events, settings.topic_score_events, settings.topic_dlq]
    with progress.step(f"topics {', '.join(names)} ({settings.topic_partitions} partitions)"):
        try:
            ensure_engine_topics(settings)
        except TopicError as exc:
            raise ServiceError(str(exc)) from exc


def stop(settings: Settings) -> bool:
    """Stop the broker if we started it; True if something was stopped."""
    paths = layout(settings)
    # SIGTERM runs Kafka's shutdown hook: a clean log flush, so the next start skips recovery.
    return process.stop_owned(
        "Kafka", paths.pidfile, str(paths.server_properties), signal.SIGTERM, _STOP_TIMEOUT
    )


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise ServiceError(
            "java not found on PATH; Kafka needs Java 17 (apt-get install openjdk-17-jre-headless)"
        )
    return java


def _libs_ready(paths: Layout) -> bool:
    try:
        return paths.libs_marker.read_text().strip() == KAFKA_VERSION
    except OSError:
        return False


def _fetch_libs(paths: Layout) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServiceError(
            "mvn not found on PATH; it fetches the Kafka jars (apt-get install maven)"
        )
    pom = paths.root / "pom.xml"
    pom.write_text(resources.files(__package__).joinpath("kafka-pom.xml").read_text())
    # Fetch into a scratch directory so an interrupted download never looks complete.
    scratch = paths.root / "libs.partial"
    shutil.rmtree(scratch, ignore_errors=True)
    process.run_checked(
        [
            mvn, "-B", "-q", "-f", pom, "dependency:copy-dependencies",
            f"-Dkafka.version={KAFKA_VERSION}",
            f"-DoutputDirectory={scratch}",
            "-DincludeScope=runtime",
        ],
        what="mvn dependency:copy-dependencies",
        cwd=paths.root,
        timeout=_FETCH_TIMEOUT,
    )  # fmt: skip
    if not any(scratch.glob(f"kafka_2.13-{KAFKA_VERSION}.jar")):
        raise ServiceError(f"mvn finished but {scratch} has no kafka_2.13-{KAFKA_VERSION}.jar")
    shutil.rmtree(paths.libs, ignore_errors=True)
    scratch.rename(paths.libs)
    paths.libs_marker.write_text(KAFKA_VERSION + "\n")


def _cluster_id(paths: Layout) -> str:
    idfile = paths.root / "cluster.id"
    if idfile.exists():
        return idfile.read_text().strip()
    # Kafka's Uuid text form: 16 random bytes, URL-safe base64 without padding.
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    idfile.write_text(cluster_id + "\n")
    return cluster_id


def _scram_args(settings: Settings) -> list[str]:
    """StorageTool's --add-scram for the engine's principal, one per SCRAM mechanism."""
    if _listener(settings) == "PLAINTEXT":
        return []
    args = []
    for mech in SCRAM_MECHANISMS:
        user = settings.kafka_sasl_username.replace('"', "")
        password = settings.kafka_sasl_password.replace('"', '\\"')
        args += ["--add-scram", f'{mech}=[name="{user}",password="{password}"]']
    return args


def _credential_mark(settings: Settings) -> str:
    """What the storage was formatted with, without the password itself."""
    if _listener(settings) == "PLAINTEXT":
        return "plaintext\n"
    digest = hashlib.sha256(settings.kafka_sasl_password.encode()).hexdigest()
    return f"scram {settings.kafka_sasl_username} {digest}\n"


def _mark_path(paths: Layout) -> Path:
    return paths.root / "credentials.mark"


def _read_mark(paths: Layout) -> str:
    try:
        return _mark_path(paths).read_text()
    except OSError:
        return ""


def _format(paths: Layout, scram: list[str]) -> None:
    process.run_checked(
        [
            _java(),
            f"-Dlog4j.configuration=file:{paths.config / 'tools-log4j.properties'}",
            "-cp", paths.classpath,
            "kafka.tools.StorageTool", "format",
            "-t", _cluster_id(paths),
            "-c", paths.server_properties,
            "--ignore-formatted",
            *scram,
        ],
        what="kafka StorageTool format",
        cwd=paths.root,
        timeout=120.0,
    )  # fmt: skip


def _listener(settings: Settings) -> str:
    """The client listener's protocol: the engine's own setting, which the local broker
    speaks (TLS is for a managed Kafka: README, "Kafka as a tenant boundary")."""
    protocol = settings.kafka_security_protocol.upper()
    if protocol not in ("PLAINTEXT", "SASL_PLAINTEXT"):
        raise ServiceError(
            f"the local Kafka speaks PLAINTEXT or SASL_PLAINTEXT, not {protocol}; "
            "set LEADSCORE_KAFKA_SECURITY_PROTOCOL, or point LEADSCORE_KAFKA_BOOTSTRAP at "
            "a broker that speaks it"
        )
    if protocol == "SASL_PLAINTEXT" and settings.kafka_sasl_mechanism not in SCRAM_MECHANISMS:
        raise ServiceError(
            f"the local Kafka authenticates with {' or '.join(SCRAM_MECHANISMS)}, "
            f"not {settings.kafka_sasl_mechanism}"
        )
    return protocol


def tls_port(settings: Settings) -> int:
    """The local broker's SASL_SSL listener: two above the client port (the controller
    takes the one between)."""
    return _ports(settings)[1] + 2


def tls_files(settings: Settings) -> TlsFiles:
    """The local broker's CA (what a client trusts) and server keystore."""
    return ensure_tls_files(layout(settings).root / "tls")


def _security(settings: Settings, listener: str) -> dict[str, str]:
    """SASL/SCRAM on the client listener and on a SASL_SSL one beside it (tls_port), and
    ACLs (StandardAuthorizer): the engine's principal is the super user; every other
    principal may do only what an ACL grants (`leadscore orgs grant-producer`)."""
    if listener == "PLAINTEXT":
        return {}
    jaas = scram_jaas(settings.kafka_sasl_username, settings.kafka_sasl_password)
    tls = tls_files(settings)
    return {
        "sasl.enabled.mechanisms": ",".join(SCRAM_MECHANISMS),
        "sasl.mechanism.inter.broker.protocol": settings.kafka_sasl_mechanism,
        **{
            f"listener.name.{name.lower()}.{mech.lower()}.sasl.jaas.config": jaas
            for mech in SCRAM_MECHANISMS
            for name in (listener, "SASL_SSL")
        },
        "listener.name.sasl_ssl.ssl.keystore.type": "PEM",
        "listener.name.sasl_ssl.ssl.keystore.location": str(tls.server),
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        # ANONYMOUS: the broker's own requests to its controller, on the CONTROLLER
        # listener (PLAINTEXT: KRaft controllers cannot take SCRAM), bound to loopback.
        "super.users": f"User:{settings.kafka_sasl_username};User:ANONYMOUS",
        "allow.everyone.if.no.acl.found": "false",
    }


def scram_jaas(username: str, password: str) -> str:
    """A Java client's (or the broker's) sasl.jaas.config for SCRAM."""

    def quoted(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    return (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f"username={quoted(username)} password={quoted(password)};"
    )


def java_client_properties(settings: Settings) -> dict[str, str]:
    """Settings.kafka for Kafka's Java clients (its perf tools in the benchmarks)."""
    props = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "security.protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol.upper().startswith("SASL"):
        props["sasl.mechanism"] = settings.kafka_sasl_mechanism
        props["sasl.jaas.config"] = scram_jaas(
            settings.kafka_sasl_username, settings.kafka_sasl_password
        )
    if settings.kafka_ssl_ca_location:
        props["ssl.truststore.type"] = "PEM"
        props["ssl.truststore.location"] = settings.kafka_ssl_ca_location
    return props


def _write_config(settings: Settings, paths: Layout) -> None:
    # Rewritten on every start so a changed port, run dir or password takes effect.
    host, port, controller = _ports(settings)
    listener = _listener(settings)
    tls = [f"SASL_SSL://{host}:{port + 2}"] if listener != "PLAINTEXT" else []
    server = {
        "process.roles": "broker,controller",
        "node.id": "1",
        # A static quorum of one voter: the simplest KRaft setup that formats without --standalone.
        "controller.quorum.voters": f"1@{host}:{controller}",
        "listeners": ",".join(
            [f"{listener}://{host}:{port}", f"CONTROLLER://{host}:{controller}", *tls]
        ),
        "advertised.listeners": ",".join([f"{listener}://{host}:{port}", *tls]),
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": listener,
        "listener.security.protocol.map": ",".join(
            [f"CONTROLLER:PLAINTEXT,{listener}:{listener}", *(["SASL_SSL:SASL_SSL"] if tls else [])]
        ),
        **_security(settings, listener),
        "log.dirs": str(paths.data),
        # One node: every replication factor and ISR must be 1 or internal topics never appear.
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        # Consumers (Faust workers, tests) should not idle 3 s waiting for a rebalance.
        "group.initial.rebalance.delay.ms": "0",
        "num.partitions": "6",
        # Faust creates its changelog and repartition topics on demand.
        "auto.create.topics.enable": "true",
        # Sized for a 2-core machine.
        "num.network.threads": "2",
        "num.io.threads": "4",
        "num.recovery.threads.per.data.dir": "2",
    }
    paths.server_properties.write_text("".join(f"{key}={value}\n" for key, value in server.items()))
    (paths.config / "log4j.properties").write_text(_LOG4J.format(logs=paths.logs))
    (paths.config / "tools-log4j.properties").write_text(_TOOLS_LOG4J)


_LOG4J = """\
log4j.rootLogger=INFO, server
log4j.appender.server=org.apache.log4j.RollingFileAppender
log4j.appender.server.File={logs}/server.log
log4j.appender.server.MaxFileSize=50MB
log4j.appender.server.MaxBackupIndex=3
log4j.appender.server.layout=org.apache.log4j.PatternLayout
log4j.appender.server.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.org.apache.kafka.raft=INFO
"""

_TOOLS_LOG4J = """\
log4j.rootLogger=WARN, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n
"""
