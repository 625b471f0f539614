"""The composition root: wires settings into the event store, catalog, scorer and relay."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adapters.eventstore import ColumnArrayRecorder, LeadStore, open_store
from adapters.rulebook import RuleBook
from adapters.settings import Settings, check_secrets
from adapters.tenancy import KnownOrgs
from adapters.topics import org_topic
from domain.scoring import Models, Scorer
from streams import metrics
from streams.processor import BatchProcessor, Decoder
from streams.relay import ScoreEventRelay, kafka_producer, relay_tracking
from streams.wire import (
    LEAD_EVENT_RECORD,
    LEAD_EVENT_SCHEMA,
    SCORE_EVENT_SCHEMA,
    AvroTopic,
    SchemaCatalog,
    SubjectBoundDecoder,
)


@dataclass
class Engine:
    settings: Settings
    store: LeadStore
    catalog: SchemaCatalog
    processor: BatchProcessor

    @property
    def decoder(self) -> Decoder:
        """What lead-events decode with (ids bound to their subjects), as the processor does."""
        return self.processor.catalog

    @property
    def scorer(self) -> Scorer:
        """The active global model (per-org models: ``processor.models``)."""
        return self.processor.models.global_model

    def relay(self) -> ScoreEventRelay:
        s = self.settings
        return ScoreEventRelay(
            self.store,
            relay_tracking(s.pg_dsn, s.topic_score_events),
            kafka_producer(s.kafka),
            s.topic_score_events,
            AvroTopic(self.catalog, s.topic_score_events, SCORE_EVENT_SCHEMA),
        )

    def close(self) -> None:
        self.processor.close()
        self.store.close()


def bootstrap(settings: Settings, scorer: Scorer | None = None) -> Engine:
    """The engine. Models come from the registry, unless a ``scorer`` (tests) is given."""
    check_secrets(settings)  # outside dev, no secret may be empty or at its dev default
    store = open_store(
        settings.pg_dsn,
        cache_size=settings.aggregate_cache_size,
        snapshot_interval=settings.snapshot_interval,
    )
    if isinstance(store.recorder, ColumnArrayRecorder):  # the worker's lock metrics
        store.recorder.lock_observer = metrics.observe_store_lock
    catalog = SchemaCatalog.from_settings(settings)
    # Register the schemas we speak so their ids exist before any producer needs them.
    lead_events = AvroTopic(catalog, settings.topic_lead_events, LEAD_EVENT_SCHEMA)
    # Lead-events decode only with ids registered as a LeadEvent under their topic's
    # subject, or under a tenant's per-org topic's (the serializer's default subject there).
    decoder = SubjectBoundDecoder(
        catalog,
        lead_events.subject,
        LEAD_EVENT_RECORD,
        ingress_prefix=org_topic(settings.topic_lead_events, ""),
    )
    orgs = KnownOrgs(settings.pg_dsn) if settings.require_registered_org else None
    rules = RuleBook.load(Path(settings.scoring_config_dir))
    models: Scorer | Models
    if scorer is None:
        # onnxruntime loads only when used
        from adapters.drift import DriftRecorder
        from adapters.model_registry import ShadowLog

        models = model_router(settings, rules)
        sinks = [ShadowLog(settings.pg_dsn), DriftRecorder(settings.pg_dsn, settings.model_dir)]
    else:
        models, sinks = scorer, []
    processor = BatchProcessor(store, decoder, models, orgs=orgs, rules_for=rules, sinks=sinks)
    return Engine(settings, store, catalog, processor)


def model_router(settings: Settings, rules: RuleBook) -> Models:
    from adapters.model_registry import ModelRegistry, ModelRouter

    registry = ModelRegistry(settings.pg_dsn, Path(settings.model_dir))
    registry.sync(preferred=settings.model_version or None)
    registry.record_rules(rules.sources())
    return ModelRouter(registry, refresh_s=settings.model_refresh_s)
