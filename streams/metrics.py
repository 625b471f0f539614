"""Prometheus metrics of the worker.

The counters obey, at every scrape between batches:

    leadscore_lead_events_total{outcome="received"}
      = {outcome="applied"} + {outcome="duplicate"} + {outcome="dead_lettered"}

and ``dead_lettered`` is the sum of ``leadscore_dead_letters_total`` over its ``reason``
(undecodable, unknown_schema, invalid, unknown_org, failed).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from adapters.eventstore import LockTiming
from streams.dlq import Reason

EVENTS = Counter(
    "leadscore_lead_events_total",
    "Lead-events taken from Kafka, by what became of them",
    ["outcome"],
)
DEAD_LETTERS = Counter(
    "leadscore_dead_letters_total",
    "Lead-events refused and sent to the dead-letter topic, by reason",
    ["reason"],
)
BATCH_RETRIES = Counter(
    "leadscore_batch_retries_total",
    "Batches retried whole for a failure not about their events (streams/errors.py): "
    "a database away or read-only, the registry down, a model missing, a mass failure",
    ["error"],
)
DEAD_LETTERS_PUBLISHED = Counter(
    "leadscore_dead_letters_published_total", "Dead letters acknowledged by Kafka"
)
# Present from the first scrape, so the equation holds before anything arrives.
for _outcome in ("received", "applied", "duplicate", "dead_lettered"):
    EVENTS.labels(_outcome)
for _reason in Reason:
    DEAD_LETTERS.labels(str(_reason))
GATE_MESSAGES = Counter(
    "leadscore_gate_messages_total",
    "Messages on tenants' per-org topics (streams/gate.py): forwarded to lead-events, "
    "or the reason they were dead-lettered",
    ["outcome"],
)
for _outcome in ("forwarded", *(str(r) for r in Reason)):
    GATE_MESSAGES.labels(_outcome)
SCORES_RECORDED = Counter("leadscore_scores_recorded_total", "LeadScored events stored")
SCORE_EVENTS_PUBLISHED = Counter(
    "leadscore_score_events_published_total", "Score-events delivered to Kafka by the relay"
)
DELIVERIES = Counter(
    "leadscore_consumer_deliveries_total",
    "Fetched messages handed to the stream: directly, or guarded against a rebalance "
    "because the stream's buffer was full or the flow suspended (streams/consumer.py)",
    ["path"],
)
for _path in ("direct", "guarded"):
    DELIVERIES.labels(_path)
BATCH_SECONDS = Histogram(
    "leadscore_batch_seconds",
    "Time to decode, apply, score and store one batch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
SCORE_LATENCY = Histogram(
    "leadscore_score_latency_seconds",
    "From a lead-event's Kafka timestamp (when it was produced) to its score stored",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)
CONSUMER_LAG = Gauge(
    "leadscore_consumer_lag_messages",
    "Lead-events in a partition this worker is assigned that its group has not committed: "
    "the partition's high watermark minus the committed offset (streams/worker.py)",
    ["topic", "partition"],
)
# Every save takes the event store's write lock (advisory: notification ids commit in
# order); workers' saves queue for it. Their sums over a window, against its length, say
# how close the store is to serial (bench/scale.py, docs/scaling.md).
_LOCK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
STORE_LOCK_WAIT = Histogram(
    "leadscore_store_lock_wait_seconds",
    "A save's wait for the event store's write lock, other writers holding it",
    buckets=_LOCK_BUCKETS,
)
STORE_LOCK_HELD = Histogram(
    "leadscore_store_lock_held_seconds",
    "A save's hold of the event store's write lock, statements sent to commit returned",
    buckets=_LOCK_BUCKETS,
)


def observe_store_lock(timing: LockTiming) -> None:
    STORE_LOCK_WAIT.observe(timing.waited_s)
    STORE_LOCK_HELD.observe(timing.held_s)


BATCH_SIZE = Histogram(
    "leadscore_batch_events",
    "Lead-events per batch",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 5000),
)
WEBHOOK_DELIVERIES = Counter(
    "leadscore_webhook_deliveries_total",
    "Webhook delivery attempts by outcome: delivered (2xx), retried (will try again), "
    "dead (gave up after the last attempt)",
    ["outcome"],
)
for _outcome in ("delivered", "retried", "dead"):
    WEBHOOK_DELIVERIES.labels(_outcome)
WEBHOOK_DELIVERY_LATENCY = Histogram(
    "leadscore_webhook_delivery_latency_seconds",
    "From a typed score-event's delivery being queued to the receiver's 2xx, retries included",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0, 3600.0),
)
WEBHOOK_REQUEST_SECONDS = Histogram(
    "leadscore_webhook_request_seconds",
    "One webhook POST, until the receiver answered or the attempt failed",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
