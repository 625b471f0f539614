"""Development tooling: the local service stack (Kafka, PostgreSQL, Redis, the dev schema
registry), and the synthetic worlds and workload generator the demo, tests and benchmarks
use. Nothing in ``adapters``, ``projections``, ``streams`` or ``query_api`` imports it; the
composition root (``leadscore``) does (.importlinter).
"""
