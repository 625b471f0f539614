"""structlog setup: console for people, JSON in production (LEADSCORE_LOG_FORMAT=json)."""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# A lead's id may be an email or a CRM key that names the person: logs carry a hash of
# it (the same lead, the same hash, so a log can still be followed), never the id.
LEAD_ID_KEYS = ("lead_id", "lead")
_LEAD_PATH = re.compile(r"^(/leads/)([^/]+)")


def lead_hash(lead_id: str) -> str:
    return "h:" + hashlib.sha256(lead_id.encode()).hexdigest()[:12]


def loggable_path(path: str) -> str:
    """A request path for logs: the lead id in /leads/{id}... replaced by its hash."""
    return _LEAD_PATH.sub(lambda m: m.group(1) + lead_hash(m.group(2)), path, count=1)


def hash_lead_ids(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: lead ids and request paths in any log line, hashed."""
    for key in LEAD_ID_KEYS:
        value = event_dict.get(key)
        if isinstance(value, str) and not value.startswith("h:"):
            event_dict[key] = lead_hash(value)
    path = event_dict.get("path")
    if isinstance(path, str):
        event_dict["path"] = loggable_path(path)
    return event_dict


def configure_logging(fmt: str = "console", level: str = "info") -> None:
    numeric = getattr(logging, level.upper(), logging.INFO)
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            hash_lead_ids,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr)
