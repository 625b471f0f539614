"""Local Kafka, PostgreSQL and Redis for development and tests (`leadscore services ...`)."""

from adapters.topics import ensure_topics, round_trip
from devtools.services.kafka import KAFKA_VERSION
from devtools.services.postgres import drop_database, ensure_database
from devtools.services.stack import down, status, up
from devtools.services.status import ServiceError, ServiceStatus

__all__ = [
    "KAFKA_VERSION",
    "ServiceError",
    "ServiceStatus",
    "down",
    "drop_database",
    "ensure_database",
    "ensure_topics",
    "round_trip",
    "status",
    "up",
]
