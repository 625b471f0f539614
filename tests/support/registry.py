"""Talking to the test session's schema registry as an upstream team does: confluent-kafka's
client config, and raw REST requests with or without credentials."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any

from adapters.settings import Settings

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
AS_CONFIGURED = "as configured"  # request(): send the settings' credentials


def registry_conf(settings: Settings, user_info: str | None = None) -> dict[str, str]:
    """confluent-kafka's SchemaRegistryClient config: the URL and ``basic.auth.user.info``
    (the settings' credentials unless ``user_info`` is given; "" sends none)."""
    info = settings.schema_registry_user_info if user_info is None else user_info
    conf = {"url": settings.schema_registry_url}
    if info:
        conf["basic.auth.user.info"] = info
    return conf


def basic(user_info: str) -> str:
    """The Authorization header value for ``user:password``."""
    return "Basic " + base64.b64encode(user_info.encode()).decode()


def request(
    settings: Settings,
    method: str,
    path: str,
    body: Any = None,
    *,
    authorization: str | None = AS_CONFIGURED,
    url: str | None = None,
) -> tuple[int, Any, Any]:
    """One raw request: (status, JSON body, headers). ``authorization`` is the header to
    send: the settings' credentials by default, None for no header."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": CONTENT_TYPE}
    if authorization == AS_CONFIGURED:
        authorization = basic(settings.schema_registry_user_info)
    if authorization is not None:
        headers["Authorization"] = authorization
    req = urllib.request.Request(
        (url or settings.schema_registry_url) + path, data=data, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read()), resp.headers
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read()), exc.headers
