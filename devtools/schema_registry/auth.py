"""HTTP basic auth in front of the registry, as Confluent's ``authentication.method=BASIC``.

Writes (POST, PUT, DELETE) always need the registry's user; reads need it only with
``reads=True`` (LEADSCORE_SCHEMA_REGISTRY_AUTH_READS). A refused request gets 401 with a
Confluent-shaped JSON body and a ``WWW-Authenticate`` challenge, and one log line that
names the method and path, never the credentials tried.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json

import structlog
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

log = structlog.get_logger(__name__)

READS = frozenset({"GET", "HEAD", "OPTIONS"})
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
_CHALLENGE = {"WWW-Authenticate": 'Basic realm="leadscore-schema-registry"'}


def credentials(authorization: str | None) -> tuple[str, str] | None:
    """The (user, password) of a ``Basic`` Authorization header, or None."""
    if not authorization:
        return None
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class BasicAuth:
    """ASGI middleware: refuse unauthenticated writes (and reads, if asked) with 401."""

    def __init__(self, app: ASGIApp, user: str, password: str, *, reads: bool = False) -> None:
        self.app = app
        self._user = user.encode()
        self._password = password.encode()
        self.reads = reads

    def allows(self, authorization: str | None) -> bool:
        given = credentials(authorization)
        if given is None or not self._password:  # no password configured: nobody writes
            return False
        # Both compared in constant time, and both always, so timing tells nothing.
        user_ok = hmac.compare_digest(given[0].encode(), self._user)
        password_ok = hmac.compare_digest(given[1].encode(), self._password)
        return user_ok and password_ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"] in READS and not self.reads):
            await self.app(scope, receive, send)
            return
        authorization = Headers(scope=scope).get("authorization")
        if self.allows(authorization):
            await self.app(scope, receive, send)
            return
        log.warning(
            "schema registry refused a request",
            method=scope["method"],
            path=scope["path"],
            reason="no credentials" if credentials(authorization) is None else "wrong credentials",
            client=(scope.get("client") or ("?",))[0],
        )
        body = {"error_code": 401, "message": "Unauthorized: this request needs credentials"}
        response = Response(json.dumps(body), 401, headers=_CHALLENGE, media_type=CONTENT_TYPE)
        await response(scope, receive, send)
