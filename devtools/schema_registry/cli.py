"""`leadscore registry`: serve the schema registry on LEADSCORE_SCHEMA_REGISTRY_URL.

Mount with ``app.command()(registry)`` in leadscore/cli.py.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from adapters.settings import Settings, check_secrets, get_settings


def address(settings: Settings) -> tuple[str, int]:
    url = urlsplit(settings.schema_registry_url)
    return url.hostname or "127.0.0.1", url.port or 8081


def serve(settings: Settings) -> None:
    import uvicorn

    from adapters.logs import configure_logging
    from devtools.schema_registry.app import create_app

    configure_logging(settings.log_format, settings.log_level)
    check_secrets(settings)  # outside dev, no write password at its dev default
    host, port = address(settings)
    app = create_app(
        settings.pg_dsn,
        settings.schema_registry_user,
        settings.schema_registry_password,
        auth_reads=settings.schema_registry_auth_reads,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")


def registry() -> None:
    """Serve the schema registry (Confluent REST API subset, schemas in PostgreSQL).

    `leadscore services up` starts it already; this runs it in the foreground.
    """
    serve(get_settings())
