"""Typed settings, read once from the environment (prefix ``LEADSCORE_``)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import lru_cache
from importlib import resources
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

PREFIX = "LEADSCORE_"
ROOT = Path(__file__).resolve().parent.parent

# Where a built wheel keeps schemas/avro, models/onnx and config/ (setup.py copies them in):
# package data of `adapters`, the layer that reads them, found with importlib.resources.
# A checkout has none and reads the folders themselves.
BUNDLE = "_bundled"


def bundled(*parts: str) -> Path:
    """A directory the engine ships: the installed package's copy, else the checkout's."""
    packaged = resources.files("adapters").joinpath(BUNDLE, *parts)
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    return ROOT.joinpath(*parts)


def _checkout() -> bool:
    return (ROOT / "pyproject.toml").is_file() and not resources.files("adapters").joinpath(
        BUNDLE
    ).is_dir()


# The dev stack's schema-registry password: the one place it is spelled. Anything but a
# laptop or a test must set LEADSCORE_SCHEMA_REGISTRY_PASSWORD instead.
DEV_SCHEMA_REGISTRY_PASSWORD = "leadscore-dev"
# The dev stack's key-encryption key (base64 of 32 bytes): wraps the per-lead keys that
# encrypt personal data (adapters/lead_keys.py). Anything but a laptop or a test must
# set LEADSCORE_KEK or LEADSCORE_KEK_FILE instead.
DEV_KEK = "bGVhZHNjb3JlLWRldi1rZWstbm90LWEtc2VjcmV0ISE="


def _default_run_dir() -> str:
    """The checkout's .run; installed from a wheel, the user's state directory."""
    if _checkout():
        return str(ROOT / ".run")
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(state) / "leadscore")


DEV, PRODUCTION = "dev", "production"
ENVIRONMENTS = (DEV, PRODUCTION)
# The query API's role when LEADSCORE_API_PG_DSN is empty (dev; `leadscore services up`
# creates it): pg_dsn's server and database, this role, this password.
DEV_API_ROLE = "leadscore_api"
DEV_API_PASSWORD = "leadscore_api"


@dataclass(frozen=True)
class Settings:
    # dev or production. In production the engine refuses to start while a secret
    # setting (SECRETS, at the end of this file) is empty or at its dev default
    # (README, "Security defaults").
    environment: str = DEV
    kafka_bootstrap: str = "127.0.0.1:9092"  # Kafka brokers, host:port[,host:port]
    # How every Kafka client of the engine (workers, relay, tools; Faust too) authenticates
    # (README, "Kafka as a tenant boundary"): PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.
    # The local broker (`leadscore services up`) speaks SASL_PLAINTEXT with SCRAM.
    kafka_security_protocol: str = "SASL_PLAINTEXT"
    kafka_sasl_mechanism: str = "SCRAM-SHA-256"  # SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN
    kafka_sasl_username: str = "leadscore"  # the engine's principal (User:<this>)
    kafka_sasl_password: str = "leadscore-dev"  # dev default; set it anywhere else
    # TLS (SSL, SASL_SSL): a PEM CA bundle to trust (empty: the system's), and for mutual
    # TLS the client's certificate and key.
    kafka_ssl_ca_location: str = ""
    kafka_ssl_certificate_location: str = ""  # client certificate (PEM), mutual TLS only
    kafka_ssl_key_location: str = ""  # client private key (PEM), mutual TLS only
    # PostgreSQL: the event store, the read model, the registries (the tables' owner)
    pg_dsn: str = "postgresql://leadscore:leadscore@127.0.0.1:5432/leadscore"
    # The query API's own role: it reads the tables and writes only what the API must
    # (query_api/db_role.py grants exactly that). Empty: pg_dsn's server and database
    # as role leadscore_api, password leadscore_api (dev; `services up` makes the role).
    api_pg_dsn: str = ""
    redis_url: str = "redis://127.0.0.1:6379/0"  # the hot read model
    redis_prefix: str = "leadscore"  # every key of the Redis read model starts with it
    schema_registry_url: str = "http://127.0.0.1:8081"  # Confluent Schema Registry API
    # HTTP basic auth for the registry: our registry refuses writes (POST, PUT, DELETE)
    # without them, and every client the engine makes sends them (README, "Producing lead-events").
    schema_registry_user: str = "leadscore"
    schema_registry_password: str = DEV_SCHEMA_REGISTRY_PASSWORD  # dev default only
    # Our registry asks for the credentials on reads too (off: reads are open, as the
    # schemas are the topics' public contract; README, "Producing lead-events").
    schema_registry_auth_reads: bool = False
    # ClickHouse analytics: chdb://<dir> embedded, or http(s)://host:8123/<database>
    clickhouse_dsn: str = field(default_factory=lambda: f"chdb://{_default_run_dir()}/chdb")
    # Local services' data and logs (`leadscore services`), and the demo's files
    run_dir: str = field(default_factory=_default_run_dir)

    topic_lead_events: str = "lead-events"  # in: upstream lead-events (Avro)
    topic_score_events: str = "score-events"  # out: score changes (Avro)
    topic_dlq: str = "lead-events.dlq"  # dead letters, each with its reason
    # Retention of the topics the engine creates (README, "Dead letters" and "Privacy"):
    # both hold people's data in the clear, which erasure cannot reach inside Kafka, so
    # both expire. Lead-events keep the broker's usual week; dead letters 30 days, time
    # to replay or fix them (-1 = never expire, which defeats erasure).
    lead_events_retention_ms: int = 604_800_000
    dlq_retention_ms: int = 2_592_000_000  # dead letters: 30 days
    # A dead letter larger than this goes to the DLQ by reference, its bytes in PostgreSQL
    # (dead_letter_payloads); below the producer's message.max.bytes (1,000,000).
    dlq_max_inline_bytes: int = 900_000
    # The largest message the broker takes (its message.max.bytes): replays of letters
    # kept by reference are produced with it.
    kafka_max_message_bytes: int = 1_048_588
    topic_partitions: int = 6  # partitions of the topics the engine creates
    consumer_group: str = "leadscore-worker"  # the workers' Kafka consumer group
    # A lead-event for an org not in `organizations` is dead-lettered (`leadscore orgs create`).
    require_registered_org: bool = True

    # Model versions' folders; a cache of the shared model_artifacts table
    model_dir: str = field(default_factory=lambda: str(bundled("models", "onnx")))
    # Seeds the model registry when it has no active global model (empty: the newest);
    # after that, `leadscore models promote` decides.
    model_version: str = ""
    model_refresh_s: float = 2.0  # how soon workers see a promotion
    # Per-org scoring rules: default.yaml and <org_id>.yaml (README, "Scoring rules").
    scoring_config_dir: str = field(default_factory=lambda: str(bundled("config", "scoring")))
    # Per-org feature specs for training: default.yaml and <org_id>.yaml (README, "Training
    # on your own data"); a model carries its spec, so workers do not read these.
    feature_config_dir: str = field(default_factory=lambda: str(bundled("config", "features")))
    # Larger batches amortise each batch's fixed costs (a transaction, a model call); 3,000
    # applied 7-10% more events/s than 1,000 on 2 cores (README, Benchmarks).
    batch_size: int = 3000
    # A batch is handed over once no lead-event came for batch_quiet_ms, or it is full, or
    # its first lead-event has waited batch_timeout_ms (streams/batching.py): a slow
    # stream's batch goes within a few ms, a busy one's grows.
    batch_quiet_ms: float = 2.0
    batch_timeout_ms: int = 50  # a batch waits at most this long to fill
    # Leads a worker keeps in memory; its memory is bounded by this
    aggregate_cache_size: int = 100_000
    # A snapshot of a lead every this many of its stored events; a lead missing from the
    # cache is rebuilt from its latest one (adapters/eventstore.py). 0: none taken.
    snapshot_interval: int = 100
    # At the head of the log the PostgreSQL and Redis projections read what was stored at
    # most once per this long (projections/base.py): the first lead-event after a quiet
    # spell is read at once, a busy stream in fewer, larger writes, so the read models
    # trail the score-events by up to this much under load (docs/performance.md).
    projection_linger_ms: int = 200
    # Which projections a worker runs: "auto" = postgres and redis, plus clickhouse
    # when it is a server (embedded chdb belongs to the API process).
    worker_projections: str = "auto"
    # The score-event relay and webhook dispatcher run in each worker (elected: one
    # publishes); 0 leaves them to `leadscore relay`, a process of their own.
    worker_relay: bool = True
    # The ingress gate (streams/gate.py) in each worker: tenants' per-org topics
    # (`leadscore orgs grant-producer`) forwarded to lead-events when the org matches.
    worker_gate: bool = True
    # Hand each fetched message to the stream without Faust's four tasks per message when
    # nothing can block it (streams/consumer.py); false: Faust's own consumer loop.
    consumer_direct_delivery: bool = True
    # With it, a fetch from Kafka waits for this many bytes or this long, whichever comes
    # first, so a trickle of lead-events is fetched a few at a time, not one per fetch
    # (README, Benchmarks: the worker's CPU per lead-event at 500/s).
    consumer_fetch_min_bytes: int = 65_536
    consumer_fetch_max_wait_ms: int = 20  # ... or this long
    # After 10 fetches in a row brought nothing, a fetch waits for one byte or this long:
    # an idle worker fetches about once a second, and the next message is answered at once
    # (streams/consumer.py, AdaptiveFetch); 0 keeps the two settings above always.
    consumer_fetch_idle_wait_ms: int = 1000

    # The decay timer (streams/decay.py): every interval, rescore up to `batch` leads whose
    # score is older than `after` as of now; 0 turns it off.
    decay_interval_s: int = 300
    decay_after_s: int = 3600  # a score older than this is rescored as of now
    decay_batch: int = 1000  # leads rescored per tick

    # The worker's and relay's metrics server: /metrics, /healthz (liveness: the event loop
    # turns), /readyz (readiness: partitions assigned, event store reachable); 0 = off.
    metrics_port: int = 0
    # Where that server listens: loopback by default; 0.0.0.0 in a container, so the
    # orchestrator's probes and Prometheus reach it.
    metrics_host: str = "127.0.0.1"
    # On SIGTERM a worker stops consuming, stores and commits the batch in hand, flushes
    # its producers and exits 0 within this many seconds; past them it exits 70 with the
    # batch uncommitted (redelivered, harmlessly). Keep it below the orchestrator's kill
    # timeout (ECS stopTimeout, Kubernetes terminationGracePeriodSeconds).
    shutdown_timeout_s: float = 25.0

    # Webhooks (streams/webhook_dispatcher.py): a delivery is retried at exponential backoff from
    # `base` up to `cap` (with jitter) and is dead after `max_attempts`; each POST may
    # take `timeout`; up to `concurrency` POSTs at once, `batch` due deliveries per round.
    webhook_max_attempts: int = 8
    webhook_backoff_base_ms: int = 1000  # first retry after about this long
    webhook_backoff_cap_ms: int = 3_600_000  # retries never further apart than this
    webhook_timeout_ms: int = 5000  # total deadline of one delivery
    webhook_batch: int = 100  # due deliveries taken per round
    # Woken by new scores, the dispatcher reads them at most once per this long: the first
    # after a quiet spell at once, a busy stream's in fewer rounds (docs/performance.md).
    webhook_linger_ms: int = 200
    webhook_concurrency: int = 8  # POSTs in flight at once
    # No org holds more than this many of those POSTs at once, so one slow receiver
    # cannot take every delivery thread (README, "Webhooks that cannot be aimed inward").
    webhook_org_concurrency: int = 2
    # Production refuses http:// URLs and any URL resolving to a loopback, private,
    # link-local, CGNAT, multicast or reserved address. Dev and tests (receivers on
    # 127.0.0.1) turn these on.
    webhooks_allow_http: bool = False
    webhooks_allow_private: bool = False  # dev only: allow URLs resolving to private addresses
    # Fernet key(s), comma-separated, newest first, that encrypt webhook secrets at rest
    # (`python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key())"`).
    # Empty: a fixed dev key, only when one of the two allowances above is on.
    webhook_secret_key: str = ""

    api_host: str = "127.0.0.1"  # where `leadscore api` listens
    api_port: int = 8000  # ... and on which port
    # Hot reads (a lead, a leaderboard) kept in the API process, evicted by the
    # projections' change notices; 0 turns the cache off. The TTL is a safety net.
    api_cache_size: int = 200_000
    api_cache_ttl_s: int = 60  # a cached read expires after this long at most
    # Token buckets in the API process (one process serves the API: query_api/server.py):
    # each key may make `rate` requests a second with bursts of `burst`, and each client
    # IP (every request, authenticated or not) likewise; past them, 429 with Retry-After.
    # 0 turns a limit off.
    api_key_rate: float = 50.0
    api_key_burst: int = 100  # burst of requests per API key
    api_ip_rate: float = 100.0  # requests per second per client IP
    api_ip_burst: int = 200  # burst of requests per client IP
    api_max_body_bytes: int = 65_536  # a larger request body answers 413
    # An unknown or revoked key is remembered this long, so repeating it costs no query.
    api_negative_cache_ttl_s: float = 30.0
    # Non-empty: GET /metrics requires `Authorization: Bearer <this>`.
    api_metrics_token: str = ""
    # Signs the console's session cookies (/console); every API process of a deployment
    # must share it. Empty: a fixed dev secret in dev; outside dev the console is off.
    console_secret: str = ""
    console_session_hours: float = 8.0  # a console sign-in lasts this long
    # Seconds between the worker's consumer-lag readings (high watermark minus committed
    # offset, per assigned partition: leadscore_consumer_lag_messages); 0 = not measured.
    consumer_lag_interval_s: int = 10
    # Traces (README "Traces"): none (off, the default), otlp (OTLP/HTTP) or console.
    otel_exporter: str = "none"
    # The OTLP/HTTP traces URL, e.g. http://collector:4318/v1/traces; empty: the SDK's
    # own (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else http://localhost:4318/v1/traces).
    otel_endpoint: str = ""
    otel_service_name: str = "leadscore"  # service.name of this process's spans
    # Key-encryption keys (README, "Privacy"): base64 of 32 random bytes each, comma-
    # separated, newest first. The newest wraps new per-lead keys; any of them unwraps,
    # until `leadscore keys rotate` re-wraps every lead key with the newest.
    kek: str = DEV_KEK  # dev default; set it (or kek_file) anywhere else
    kek_file: str = ""  # a file holding the same list (one per line); wins over kek
    log_format: str = "console"  # "json" in production
    log_level: str = "info"  # debug, info, warning or error

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir)

    @property
    def kek_text(self) -> str:
        """The key-encryption keys as configured: ``kek_file``'s contents, else ``kek``."""
        if self.kek_file:
            return Path(self.kek_file).read_text()
        return self.kek

    @property
    def api_dsn(self) -> str:
        """The query API's DSN: ``api_pg_dsn``, or the dev role on pg_dsn's database."""
        if self.api_pg_dsn:
            return self.api_pg_dsn
        return dsn_with_role(self.pg_dsn, DEV_API_ROLE, DEV_API_PASSWORD)

    @property
    def kafka(self) -> dict[str, str]:
        """The connection part of a confluent-kafka (librdkafka) client's config: brokers
        and security. Every producer, consumer and admin client starts from it."""
        conf = {
            "bootstrap.servers": self.kafka_bootstrap,
            "security.protocol": self.kafka_security_protocol,
        }
        if self.kafka_security_protocol.upper().startswith("SASL"):
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism
            conf["sasl.username"] = self.kafka_sasl_username
            conf["sasl.password"] = self.kafka_sasl_password
        for key, value in (
            ("ssl.ca.location", self.kafka_ssl_ca_location),
            ("ssl.certificate.location", self.kafka_ssl_certificate_location),
            ("ssl.key.location", self.kafka_ssl_key_location),
        ):
            if value:
                conf[key] = value
        return conf

    @property
    def schema_registry_user_info(self) -> str:
        """``user:password``, as confluent-kafka's ``basic.auth.user.info`` takes them."""
        return f"{self.schema_registry_user}:{self.schema_registry_password}"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(PREFIX + f.name.upper())
            if raw is None:
                continue
            values[f.name] = _parse(raw, f.type)
        return cls(**values)  # type: ignore[arg-type]


def dsn_with_role(dsn: str, user: str, password: str) -> str:
    """The same server and database as another role (a URL stays a URL: asyncpg needs one)."""
    if dsn.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(dsn)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
        netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}{port}"
        return urlunsplit(parts._replace(netloc=netloc))
    # key=value form: libpq takes the last value of a repeated keyword.
    return f"{dsn} user='{_conninfo_quote(user)}' password='{_conninfo_quote(password)}'"


def _conninfo_quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def dsn_password(dsn: str) -> str:
    """The password a DSN carries ('' if none); URL or key=value form."""
    if dsn.startswith(("postgresql://", "postgres://")):
        return unquote(urlsplit(dsn).password or "")
    found = ""
    for m in re.finditer(r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", dsn):
        value = m.group(1)
        found = re.sub(r"\\(.)", r"\1", value[1:-1]) if value.startswith("'") else value
    return found


class InsecureSettingsError(ValueError):
    """Outside dev, a secret setting is empty or at its dev default."""


@dataclass(frozen=True)
class Secret:
    """A setting that holds a secret, and how to read the secret out of the settings."""

    setting: str
    value: Callable[[Settings], str]
    # Whether the secret is used at all with these settings (e.g. SASL is on).
    applies: Callable[[Settings], bool] = lambda _s: True


# Every secret the engine holds. Outside dev, each that applies must be set, and not to
# its dev default: add a secret setting here when you add one.
SECRETS: list[Secret] = [
    Secret("pg_dsn", lambda s: dsn_password(s.pg_dsn)),
    Secret("api_pg_dsn", lambda s: dsn_password(s.api_dsn)),
    Secret("webhook_secret_key", lambda s: s.webhook_secret_key),
    Secret("schema_registry_password", lambda s: s.schema_registry_password),
    # Only the newest key counts: an old one kept to unwrap until rotation may be the dev one.
    Secret("kek", lambda s: s.kek_text.replace("\n", ",").split(",")[0].strip()),
    Secret(
        "kafka_sasl_password",
        lambda s: s.kafka_sasl_password,
        lambda s: s.kafka_security_protocol.upper().startswith("SASL"),
    ),
]


def insecure_secrets(settings: Settings) -> list[str]:
    """The secret settings that are empty or keep their dev default (any environment)."""
    dev = Settings()
    return [
        secret.setting
        for secret in SECRETS
        if secret.applies(settings) and secret.value(settings) in ("", secret.value(dev))
    ]


def check_secrets(settings: Settings) -> None:
    """Refuse to run outside dev with a dev-default or empty secret; name each one."""
    if settings.environment not in ENVIRONMENTS:
        raise InsecureSettingsError(
            f"{PREFIX}ENVIRONMENT is {settings.environment!r}; expected one of {ENVIRONMENTS}"
        )
    if settings.environment == DEV:
        return
    bad = insecure_secrets(settings)
    if bad:
        names = ", ".join(PREFIX + name.upper() for name in bad)
        raise InsecureSettingsError(
            f"{PREFIX}ENVIRONMENT={settings.environment} refuses secrets that are empty or "
            f"at their dev default; set {names} from the environment"
        )


def _parse(raw: str, type_: object) -> object:
    if type_ in ("int", int):
        return int(raw)
    if type_ in ("float", float):
        return float(raw)
    if type_ in ("bool", bool):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    return raw


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings.from_env()


def settings_env(settings: Settings) -> dict[str, str]:
    """The LEADSCORE_* environment that reproduces ``settings`` in a subprocess."""
    return {PREFIX + f.name.upper(): str(getattr(settings, f.name)) for f in fields(settings)}
