"""``python -m query_api``: the same as ``leadscore api``."""

from __future__ import annotations

from adapters.logs import configure_logging
from adapters.settings import InsecureSettingsError, check_secrets, get_settings
from query_api.server import serve

if __name__ == "__main__":
    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)
    try:
        check_secrets(settings)
    except InsecureSettingsError as exc:
        raise SystemExit(f"error: {exc}") from exc
    serve(settings)
