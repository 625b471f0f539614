"""Per-org webhooks' tables and the commands over them (add, list, remove, retry).

This module owns ``webhooks`` and ``webhook_deliveries``: their DDL, and every write but
the dispatcher's own bookkeeping of attempts (streams/webhook_dispatcher.py). URLs must
resolve to public addresses (adapters/webhook_http.py); secrets are stored encrypted
(adapters/webhook_secrets.py; docs/api.md, "Webhooks").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
import structlog
from psycopg.rows import dict_row

from adapters.eventstore import ddl_lock
from adapters.settings import Settings
from adapters.tenancy import SCHEMA_DDL as TENANCY_DDL
from adapters.webhook_http import UrlPolicy, UrlRefusedError, check_url
from adapters.webhook_secrets import SecretBox, new_secret
from domain.transitions import TYPED_EVENTS

log = structlog.get_logger(__name__)

STATUSES = ("pending", "delivered", "dead")
ERROR_LENGTH = 500  # last_error is for people; a receiver's whole error page is not

SCHEMA_DDL = """
CREATE TABLE IF NOT EXISTS webhooks (
    id bigserial PRIMARY KEY,
    org_id text NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    url text NOT NULL,
    secret text NOT NULL,
    event_types text[] NOT NULL,
    active boolean NOT NULL DEFAULT true,
    -- Events stored up to here predate the webhook and are not sent to it.
    from_position bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id bigserial PRIMARY KEY,
    webhook_id bigint NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    org_id text NOT NULL,
    event_id text NOT NULL,
    event_type text NOT NULL,
    payload jsonb NOT NULL,
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz DEFAULT now(),
    last_status integer,
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz,
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due_idx
    ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_org_idx ON webhook_deliveries (org_id, id);
"""


class WebhookError(ValueError):
    """A webhook command that cannot be carried out (unknown org or id, bad URL or type)."""


def ensure_schema(dsn: str, box: SecretBox | None = None) -> None:
    """The tables; with ``box``, also seal secrets stored before encryption (or under an
    older key), so the migration runs wherever the key is known (CLI, dispatcher)."""
    with ddl_lock(dsn), psycopg.connect(dsn, autocommit=True) as conn:
        with conn.transaction():
            # webhooks references organizations: make sure it exists, under tenancy's lock.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('adapters.tenancy.schema'))")
            conn.execute(TENANCY_DDL)
        conn.execute(SCHEMA_DDL)
        if box is not None:
            migrate_secrets(conn, box)


def migrate_secrets(conn: psycopg.Connection[Any], box: SecretBox) -> int:
    """Encrypt every plain-text secret (rows from before encryption); returns how many."""
    with conn.transaction():
        rows = conn.execute(
            "SELECT id, secret FROM webhooks WHERE secret NOT LIKE 'fernet:%' FOR UPDATE"
        ).fetchall()
        for hook_id, secret in rows:
            conn.execute(
                "UPDATE webhooks SET secret = %s WHERE id = %s", (box.seal(secret), hook_id)
            )
    if rows:
        log.info("webhook secrets encrypted", count=len(rows))
    return len(rows)


def rotate_secrets(conn: psycopg.Connection[Any], box: SecretBox) -> int:
    """Re-encrypt every secret under the newest key (after adding one); returns how many."""
    with conn.transaction():
        rows = conn.execute("SELECT id, secret FROM webhooks FOR UPDATE").fetchall()
        for hook_id, secret in rows:
            conn.execute(
                "UPDATE webhooks SET secret = %s WHERE id = %s", (box.reseal(secret), hook_id)
            )
    return len(rows)


@dataclass(frozen=True, slots=True)
class Webhook:
    id: int
    org_id: str
    url: str
    event_types: list[str]
    active: bool
    created_at: datetime


def parse_event_types(text: str | None) -> list[str]:
    if not text:
        return list(TYPED_EVENTS)
    wanted = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in wanted if t not in TYPED_EVENTS]
    if unknown or not wanted:
        raise WebhookError(
            f"unknown event type(s) {', '.join(unknown) or '(none)'}; "
            f"choose from {', '.join(TYPED_EVENTS)}"
        )
    return list(dict.fromkeys(wanted))


def add_webhook(
    conn: psycopg.Connection[Any],
    org_id: str,
    url: str,
    event_types: Sequence[str],
    from_position: int,
    *,
    policy: UrlPolicy,
    box: SecretBox,
) -> tuple[Webhook, str]:
    """A new webhook and its secret (shown once). It receives events stored after
    ``from_position`` (the log's head now), not the org's whole history. The URL must
    resolve to public addresses only (``policy``: https, unless dev allows http)."""
    try:
        check_url(url, policy)
    except UrlRefusedError as exc:
        raise WebhookError(f"{exc}: {url[:200]!r}") from exc
    secret = new_secret()
    try:
        row = conn.execute(
            "INSERT INTO webhooks (org_id, url, secret, event_types, from_position) "
            "VALUES (%s, %s, %s, %s, %s) "
            "RETURNING id, org_id, url, event_types, active, created_at",
            (org_id, url, box.seal(secret), list(event_types), from_position),
        ).fetchone()
    except psycopg.errors.ForeignKeyViolation as exc:
        raise WebhookError(
            f"no organization {org_id!r}; create it with `leadscore orgs create`"
        ) from exc
    assert row is not None
    return Webhook(*row), secret


def list_webhooks(
    conn: psycopg.Connection[Any], org_id: str | None = None, *, include_removed: bool = False
) -> list[Webhook]:
    rows = conn.execute(
        "SELECT id, org_id, url, event_types, active, created_at FROM webhooks "
        "WHERE (%s::text IS NULL OR org_id = %s) AND (active OR %s) ORDER BY id",
        (org_id, org_id, include_removed),
    ).fetchall()
    return [Webhook(*r) for r in rows]


def remove_webhook(conn: psycopg.Connection[Any], webhook_id: int) -> int:
    """Deactivate a webhook (its delivery history stays); its pending deliveries become
    dead, so none is left waiting for a receiver nobody sends to. Returns how many."""
    with conn.transaction():
        found = conn.execute(
            "UPDATE webhooks SET active = false WHERE id = %s AND active RETURNING id",
            (webhook_id,),
        ).fetchone()
        if found is None:
            raise WebhookError(f"no active webhook {webhook_id}")
        cur = conn.execute(
            "UPDATE webhook_deliveries SET status = 'dead', next_attempt_at = NULL, "
            "last_error = 'webhook removed' WHERE webhook_id = %s AND status = 'pending'",
            (webhook_id,),
        )
        return cur.rowcount


def retry_delivery(conn: psycopg.Connection[Any], delivery_id: int) -> None:
    """A dead delivery back to pending, due now, its attempts reset."""
    row = conn.execute(
        "UPDATE webhook_deliveries d SET status = 'pending', attempts = 0, "
        "next_attempt_at = now() FROM webhooks w "
        "WHERE d.id = %s AND d.status = 'dead' AND w.id = d.webhook_id AND w.active "
        "RETURNING d.id",
        (delivery_id,),
    ).fetchone()
    if row is None:
        raise WebhookError(f"no dead delivery {delivery_id} of an active webhook")


DELIVERY_COLUMNS = (
    "d.id, d.webhook_id, w.url, d.org_id, d.event_id, d.event_type, d.status, d.attempts, "
    "d.last_status, d.last_error, d.next_attempt_at, d.created_at, d.delivered_at"
)


def list_deliveries(
    conn: psycopg.Connection[Any],
    org_id: str | None = None,
    status: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Newest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d "
            "JOIN webhooks w ON w.id = d.webhook_id "
            "WHERE (%s::text IS NULL OR d.org_id = %s) AND (%s::text IS NULL OR d.status = %s) "
            "ORDER BY d.id DESC LIMIT %s",
            (org_id, org_id, status, status, limit),
        ).fetchall()


def policy_from_settings(s: Settings) -> UrlPolicy:
    return UrlPolicy(allow_http=s.webhooks_allow_http, allow_private=s.webhooks_allow_private)
