"""Typed settings, read once from the environment (prefix ``LEADSCORE_``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path

PREFIX = "LEADSCORE_"
ROOT = Path(__file__).resolve().parent.parent


def _default_run_dir() -> str:
    return str(ROOT / ".run")


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str = "127.0.0.1:9092"
    pg_dsn: str = "postgresql://leadscore:leadscore@127.0.0.1:5432/leadscore"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "leadscore"  # every key of the Redis read model starts with it
    schema_registry_url: str = "http://127.0.0.1:8081"
    clickhouse_dsn: str = field(default_factory=lambda: f"chdb://{_default_run_dir()}/chdb")
    run_dir: str = field(default_factory=_default_run_dir)

    topic_lead_events: str = "lead-events"
    topic_score_events: str = "score-events"
    topic_dlq: str = "lead-events.dlq"
    topic_partitions: int = 6
    consumer_group: str = "leadscore-worker"
    # A lead-event for an org not in `organizations` is dead-lettered (`leadscore orgs create`).
    require_registered_org: bool = True

    model_dir: str = field(default_factory=lambda: str(ROOT / "models" / "onnx"))
    # Seeds the model registry when it has no active global model (empty: the newest);
    # after that, `leadscore models promote` decides.
    model_version: str = ""
    model_refresh_s: float = 2.0  # how soon workers see a promotion
    # Per-org scoring rules: default.yaml and <org_id>.yaml (README, "Scoring rules").
    scoring_config_dir: str = field(default_factory=lambda: str(ROOT / "config" / "scoring"))
    # Per-org feature specs for training: default.yaml and <org_id>.yaml (README, "Training
    # on your own data"); a model carries its spec, so workers do not read these.
    feature_config_dir: str = field(default_factory=lambda: str(ROOT / "config" / "features"))
    # Larger batches amortise each batch's fixed costs (a transaction, a model call); 3,000
    # applied 7-10% more events/s than 1,000 on 2 cores (README, Benchmarks).
    batch_size: int = 3000
    batch_timeout_ms: int = 50
    aggregate_cache_size: int = 100_000
    # A snapshot of a lead every this many of its stored events; a lead missing from the
    # cache is rebuilt from its latest one (leadscore/eventstore.py). 0: none taken.
    snapshot_interval: int = 100
    publish_interval_ms: int = 20
    # Which projections a worker runs: "auto" = postgres and redis, plus clickhouse
    # when it is a server (embedded chdb belongs to the API process).
    worker_projections: str = "auto"
    # The score-event relay and webhook dispatcher run in each worker (elected: one
    # publishes); 0 leaves them to `leadscore relay`, a process of their own.
    worker_relay: bool = True
    # Hand each fetched message to the stream without Faust's four tasks per message when
    # nothing can block it (streams/consumer.py); false: Faust's own consumer loop.
    consumer_direct_delivery: bool = True
    # With it, a fetch from Kafka waits for this many bytes or this long, whichever comes
    # first, so a trickle of lead-events is fetched a few at a time, not one per fetch
    # (README, Benchmarks: the worker's CPU per lead-event at 500/s).
    consumer_fetch_min_bytes: int = 65_536
    consumer_fetch_max_wait_ms: int = 20

    # The decay timer (streams/decay.py): every interval, rescore up to `batch` leads whose
    # score is older than `after` as of now; 0 turns it off.
    decay_interval_s: int = 300
    decay_after_s: int = 3600
    decay_batch: int = 1000

    metrics_port: int = 0  # worker's Prometheus endpoint on 127.0.0.1; 0 = off

    # Webhooks (streams/webhooks.py): a delivery is retried at exponential backoff from
    # `base` up to `cap` (with jitter) and is dead after `max_attempts`; each POST may
    # take `timeout`; up to `concurrency` POSTs at once, `batch` due deliveries per round.
    webhook_max_attempts: int = 8
    webhook_backoff_base_ms: int = 1000
    webhook_backoff_cap_ms: int = 3_600_000
    webhook_timeout_ms: int = 5000
    webhook_batch: int = 100
    webhook_concurrency: int = 8

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # Hot reads (a lead, a leaderboard) kept in the API process, evicted by the
    # projections' change notices; 0 turns the cache off. The TTL is a safety net.
    api_cache_size: int = 200_000
    api_cache_ttl_s: int = 60
    log_format: str = "console"  # "json" in production
    log_level: str = "info"

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir)

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
