"""Webhook secrets: Standard Webhooks signatures, and encryption at rest.

**Signing** follows Standard Webhooks (https://www.standardwebhooks.com), so a receiver
verifies with a stock library (``standardwebhooks.Webhook(secret).verify(body, headers)``
in Python, ``standardwebhooks`` on npm, ...): the secret is ``whsec_`` + base64 of
random bytes, the key is those bytes, and each request carries ``webhook-id``,
``webhook-timestamp`` and ``webhook-signature: v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">``.

**At rest** a secret is stored Fernet-encrypted (``fernet:`` + token) under the key(s)
of ``LEADSCORE_WEBHOOK_SECRET_KEY``: several keys, comma-separated and newest first,
let the key rotate (new secrets and re-encryption use the first; any decrypts). A
database dump alone no longer lets anyone forge an org's webhooks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

import structlog
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from adapters.settings import Settings

log = structlog.get_logger(__name__)

SECRET_PREFIX = "whsec_"
STORED_PREFIX = "fernet:"
ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
TOLERANCE_S = 300
# Only for dev and tests (a webhook allowance on): anyone can read it here.
DEV_KEY = base64.urlsafe_b64encode(hashlib.sha256(b"leadscore dev webhook key").digest())


class SecretKeyError(ValueError):
    """No usable key to encrypt or decrypt webhook secrets with."""


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    # As the reference libraries read it: the prefix off, base64 decoded leniently.
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX) + "==")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header's value."""
    mac = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def headers(secret: str, msg_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
    ts = int(time.time() if now is None else now)
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(ts),
        SIGNATURE_HEADER: sign(secret, msg_id, ts, body),
    }


def verify(secret: str, received: dict[str, str], body: bytes, *, now: float | None = None) -> bool:
    """What a receiver does: recompute, compare in constant time, refuse stale timestamps."""
    got = {k.lower(): v for k, v in received.items()}
    msg_id, ts, sigs = (got.get(h, "") for h in (ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER))
    if not (msg_id and ts.isdigit() and sigs):
        return False
    if abs((time.time() if now is None else now) - int(ts)) > TOLERANCE_S:
        return False
    want = sign(secret, msg_id, int(ts), body)
    return any(hmac.compare_digest(want, s) for s in sigs.split(" ") if s.startswith("v1,"))


class SecretBox:
    """Encrypts secrets for the ``webhooks`` table and decrypts them for signing."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise SecretKeyError("no webhook secret key")
        try:
            self._fernet = MultiFernet([Fernet(k) for k in keys])
        except ValueError as exc:
            raise SecretKeyError(
                "LEADSCORE_WEBHOOK_SECRET_KEY must be Fernet keys (32 url-safe base64 bytes), "
                "comma-separated"
            ) from exc

    @classmethod
    def from_settings(cls, s: Settings) -> SecretBox:
        keys = [k.strip().encode() for k in s.webhook_secret_key.split(",") if k.strip()]
        if keys:
            return cls(keys)
        if s.webhooks_allow_http or s.webhooks_allow_private:
            log.warning("webhook secrets use the dev key: set LEADSCORE_WEBHOOK_SECRET_KEY")
            return cls([DEV_KEY])
        raise SecretKeyError(
            "LEADSCORE_WEBHOOK_SECRET_KEY is not set; webhooks need it to keep their "
            "secrets encrypted (a dev key is used only with LEADSCORE_WEBHOOKS_ALLOW_HTTP "
            "or LEADSCORE_WEBHOOKS_ALLOW_PRIVATE)"
        )

    def seal(self, secret: str) -> str:
        return STORED_PREFIX + self._fernet.encrypt(secret.encode()).decode()

    def open(self, stored: str) -> str:
        if not stored.startswith(STORED_PREFIX):
            return stored  # a row from before encryption, until migrate() seals it
        try:
            return self._fernet.decrypt(stored.removeprefix(STORED_PREFIX).encode()).decode()
        except InvalidToken as exc:
            raise SecretKeyError("a webhook secret does not decrypt with the key(s) set") from exc

    def reseal(self, stored: str) -> str:
        """``stored`` under the newest key (plain rows sealed; sealed rows rotated)."""
        return self.seal(self.open(stored))
