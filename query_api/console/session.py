"""Console sessions: a signed, httpOnly, SameSite=Strict cookie, and a CSRF token per session.

Signing in with an org API key stores the key's SHA-256 (never the key), its org, a
random CSRF token and an expiry in the cookie, signed with HMAC-SHA256 under
``console_secret``. Every request checks the signature and the expiry, then the key
itself (revoked or expired keys end their sessions within the key cache's TTL). Every
POST must carry the session's CSRF token in its form (``csrf``): SameSite=Strict already
keeps other sites' forms from sending the cookie; the token covers older browsers and
same-site subdomains.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson

COOKIE = "leadscore_console"
PATH = "/console"


class SessionError(ValueError):
    """A cookie that is missing, forged, malformed or expired."""


@dataclass(frozen=True, slots=True)
class Session:
    org_id: str
    key_id: str
    key_hash: bytes
    csrf: str
    expires: float
    admin: bool = False


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    def __init__(self, secret: str, lifetime_s: float) -> None:
        # A key of its own for cookies, derived so the setting's text is never the MAC key.
        self._key = hashlib.sha256(b"leadscore console session\x00" + secret.encode()).digest()
        self.lifetime_s = lifetime_s

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def new(self, org_id: str, key_id: str, key_hash: bytes, admin: bool) -> Session:
        return Session(
            org_id=org_id,
            key_id=key_id,
            key_hash=key_hash,
            csrf=secrets.token_urlsafe(24),
            expires=time.time() + self.lifetime_s,
            admin=admin,
        )

    def dumps(self, session: Session) -> str:
        body: dict[str, Any] = {
            "o": session.org_id,
            "k": session.key_id,
            "h": _b64(session.key_hash),
            "c": session.csrf,
            "e": session.expires,
            "a": session.admin,
        }
        payload = _b64(orjson.dumps(body))
        return f"{payload}.{self._mac(payload)}"

    def loads(self, cookie: str | None) -> Session:
        if not cookie or cookie.count(".") != 1:
            raise SessionError("no session")
        payload, mac = cookie.split(".")
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise SessionError("bad signature")
        try:
            body = orjson.loads(_unb64(payload))
            session = Session(
                org_id=str(body["o"]),
                key_id=str(body["k"]),
                key_hash=_unb64(str(body["h"])),
                csrf=str(body["c"]),
                expires=float(body["e"]),
                admin=bool(body["a"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise SessionError("malformed session") from exc
        if session.expires < time.time():
            raise SessionError("session expired")
        return session


def csrf_ok(session: Session, token: str | None) -> bool:
    return token is not None and hmac.compare_digest(session.csrf.encode(), token.encode())


def cookie_header(value: str, max_age: int, secure: bool) -> str:
    parts = [
        f"{COOKIE}={value}",
        f"Path={PATH}",
        f"Max-Age={max_age}",
        "HttpOnly",
        "SameSite=Strict",
    ]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)
