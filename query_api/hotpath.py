"""Cache hits of the two hot reads, answered before routing.

``GET /leads/{id}`` and ``GET /leaderboard`` are most of a dashboard's traffic. When the
hot-read cache (query_api/hotcache.py) holds the answer, this middleware sends the stored
body itself, sparing the router, the request and response objects and the exception
layers; anything else (a miss, another route, an error) goes down the normal stack, where
the route computes the answer and fills the cache. It sits after BearerAuth, so the org
is the key's, and the cache is keyed by that org.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from query_api.resources import Resources

_JSON = (b"content-type", b"application/json")
_LEADS = "/leads/"


class HotReads:
    def __init__(self, app: ASGIApp, lead_route: Route, leaderboard_route: Route) -> None:
        self.app = app
        self.lead_route = lead_route
        self.leaderboard_route = leaderboard_route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self._hit(scope) if scope["type"] == "http" and scope["method"] == "GET" else None
        if body is None:
            await self.app(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(body)).encode()), _JSON],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _hit(self, scope: Scope) -> bytes | None:
        org = scope.get("state", {}).get("org_id")
        if org is None:
            return None
        resources: Resources = scope["app"].state.resources
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]  # as the router sees it
        if path == "/leaderboard":
            body = resources.hot.board(org, scope["query_string"])
            route = self.leaderboard_route
        elif path.startswith(_LEADS) and len(path) > len(_LEADS) and "/" not in path[len(_LEADS) :]:
            # The route's own pattern ({id} = one non-empty segment); only valid ids of
            # existing leads are ever stored, so a hit needs no validation.
            body = resources.hot.lead(org, path[len(_LEADS) :])
            route = self.lead_route
        else:
            return None
        if body is not None:
            scope["route"] = route  # metrics label the answer by its route template
        return body
