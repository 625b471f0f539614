"""Adapters: the engine's ports to the outside world, below every entry point.

Settings and logging, the PostgreSQL event store, tenancy, the model registry and store,
scoring rules and feature specs, drift, topics and Kafka access, Prometheus metrics. Each
table is created by exactly one module here (or by the projection that owns it). Adapters
import only ``domain`` and each other; ``streams``, ``projections``, ``query_api``,
``devtools`` and ``leadscore`` import them, never the other way round (.importlinter).
"""
