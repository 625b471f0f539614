"""Prometheus metrics of the worker. Counters obey: in = applied + duplicate + invalid + failed."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

EVENTS = Counter(
    "leadscore_lead_events_total",
    "Lead-events taken from Kafka, by what became of them",
    ["outcome"],
)
SCORES_RECORDED = Counter("leadscore_scores_recorded_total", "LeadScored events stored")
SCORE_EVENTS_PUBLISHED = Counter(
    "leadscore_score_events_published_total", "Score-events delivered to Kafka by the relay"
)
BATCH_SECONDS = Histogram(
    "leadscore_batch_seconds",
    "Time to decode, apply, score and store one batch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
BATCH_SIZE = Histogram(
    "leadscore_batch_events",
    "Lead-events per batch",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 5000),
)
