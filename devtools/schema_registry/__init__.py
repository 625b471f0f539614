"""A schema registry speaking the Confluent REST API subset the engine needs, on PostgreSQL."""

from devtools.schema_registry.app import create_app

__all__ = ["create_app"]
