"""The composition root: wires settings into the event store, catalog, scorer and relay."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from domain.scoring import Scorer
from leadscore.eventstore import LeadStore, open_store
from leadscore.rulebook import RuleBook
from leadscore.settings import Settings
from streams.processor import BatchProcessor, OrgRegistry
from streams.relay import ScoreEventRelay, Tracking, kafka_producer
from streams.wire import LEAD_EVENT_SCHEMA, SCORE_EVENT_SCHEMA, AvroTopic, SchemaCatalog


@dataclass
class Engine:
    settings: Settings
    store: LeadStore
    catalog: SchemaCatalog
    scorer: Scorer
    processor: BatchProcessor

    def relay(self) -> ScoreEventRelay:
        s = self.settings
        return ScoreEventRelay(
            self.store,
            Tracking(s.pg_dsn, s.topic_score_events),
            kafka_producer(s.kafka_bootstrap),
            s.topic_score_events,
            AvroTopic(self.catalog, s.topic_score_events, SCORE_EVENT_SCHEMA),
        )

    def close(self) -> None:
        self.store.close()


def bootstrap(settings: Settings, scorer: Scorer | None = None) -> Engine:
    store = open_store(settings.pg_dsn, cache_size=settings.aggregate_cache_size)
    catalog = SchemaCatalog(settings.schema_registry_url)
    # Register the schemas we speak so their ids exist before any producer needs them.
    AvroTopic(catalog, settings.topic_lead_events, LEAD_EVENT_SCHEMA)
    if scorer is None:
        from leadscore.modelstore import load_scorer  # onnxruntime loads only when used

        scorer = load_scorer(Path(settings.model_dir), settings.model_version or None)
    orgs = OrgRegistry(settings.pg_dsn) if settings.require_registered_org else None
    rules = RuleBook.load(Path(settings.scoring_config_dir))
    processor = BatchProcessor(store, catalog, scorer, orgs=orgs, rules_for=rules)
    return Engine(settings, store, catalog, scorer, processor)
