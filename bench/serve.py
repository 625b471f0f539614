"""Servers for the API benchmark: the real API, and the peer, served the same way."""

from __future__ import annotations

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from adapters.settings import Settings
from query_api.responses import JSON
from query_api.server import config

_BODY = {"lead_id": "lead-000001", "org_id": "org-001", "score": 87.5, "grade": "A1"}


async def constant(_request: Request) -> Response:
    return JSON(_BODY)


# Also under /leads/{id}, so the paced latency run can send the peer the same requests.
peer_app = Starlette(routes=[Route("/constant", constant), Route("/leads/{id}", constant)])


def main() -> None:
    which, port = sys.argv[1], int(sys.argv[2])
    settings = Settings.from_env()
    cfg = config(settings, port=port)
    if which == "peer":
        # Same server, loop and HTTP parser as the API; only the application differs.
        cfg = uvicorn.Config(
            peer_app, host=cfg.host, port=port, loop=cfg.loop, http=cfg.http,
            lifespan="off", log_config=None, access_log=False, server_header=False,
        )  # fmt: skip
    uvicorn.Server(cfg).run()


if __name__ == "__main__":
    main()
