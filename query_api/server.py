"""Running the API: uvicorn on uvloop + httptools, one process (see docs/api.md for numbers).

One process because with the embedded ClickHouse (chDB) only one process may open its
data directory, and on the 2-core target the second core belongs to the databases.
"""

from __future__ import annotations

import importlib.util

import structlog
import uvicorn

from adapters.settings import Settings
from query_api.app import create_app

log = structlog.get_logger(__name__)


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def config(
    settings: Settings, *, host: str | None = None, port: int | None = None
) -> uvicorn.Config:
    # uvloop and httptools are measured faster; fall back to the pure-Python stack
    # where they are not installed rather than failing to start.
    return uvicorn.Config(
        create_app(settings),
        host=host or settings.api_host,
        port=port if port is not None else settings.api_port,
        loop="uvloop" if _has("uvloop") else "asyncio",
        http="httptools" if _has("httptools") else "h11",
        lifespan="on",
        log_config=None,  # logging is configured once, by adapters.logs
        access_log=False,  # request counts and latency are in /metrics
        server_header=False,
        timeout_graceful_shutdown=10,
    )


def serve(settings: Settings, *, host: str | None = None, port: int | None = None) -> None:
    cfg = config(settings, host=host, port=port)
    log.info("query API starting", host=cfg.host, port=cfg.port, loop=cfg.loop, http=cfg.http)
    uvicorn.Server(cfg).run()
