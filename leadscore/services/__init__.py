"""Local Kafka, PostgreSQL and Redis for development and tests (`leadscore services ...`)."""

from leadscore.services.kafka import KAFKA_VERSION
from leadscore.services.model import ServiceError, ServiceStatus
from leadscore.services.postgres import drop_database, ensure_database
from leadscore.services.stack import down, status, up
from leadscore.services.topics import ensure_topics, round_trip

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
