"""Per-org webhooks: the typed score-events (lead.qualified, lead.disqualified,
lead.grade_changed) POSTed to an org's URLs, signed, retried with backoff, dead-lettered.

Two steps, one elected dispatcher (an advisory lock, as the relay):

1. *Enqueue*: follow the event store's notification log from a tracked position; each
   stored LeadScored gives its typed events (``score_records``), and each active webhook
   of the org subscribed to a type gets a pending row in ``webhook_deliveries``. The rows
   and the new position commit in one transaction, and a row is unique per (webhook,
   event id), so a crash neither loses nor duplicates a delivery.
2. *Send*: claim due rows (pushing their next attempt a lease ahead, so a crash mid-send
   retries rather than loses them), POST each, then record delivered, a retry at
   now + backoff, or, after ``max_attempts``, dead (the dead letter, with its last error).

Receivers verify ``X-Leadscore-Signature: sha256=HMAC(secret, f"{timestamp}.{body}")``
(``verify`` below; docs/api.md, "Webhooks").
"""

from __future__ import annotations

import hashlib
import hmac
import random
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import psycopg
import structlog
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from domain.transitions import TYPED_EVENTS
from leadscore.eventstore import DATABASE_UNAVAILABLE, SCORED_TOPIC, LeadStore, ddl_lock
from leadscore.settings import Settings
from leadscore.tenancy import SCHEMA_DDL as TENANCY_DDL
from streams import metrics
from streams.relay import Tracking, score_records

log = structlog.get_logger(__name__)

TRACKING_NAME = "webhooks"
SIGNATURE_HEADER = "X-Leadscore-Signature"
TIMESTAMP_HEADER = "X-Leadscore-Timestamp"
STATUSES = ("pending", "delivered", "dead")
SECRET_PREFIX = "whsec_"
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


# -- signing ---------------------------------------------------------------------------


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value: HMAC-SHA256 over the exact bytes ``{timestamp}.{body}``.

    The timestamp is inside the MAC so a captured request cannot be replayed later
    under a fresh timestamp.
    """
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    now: float | None = None,
    tolerance_s: int = 300,
) -> bool:
    """What a receiver does: recompute, compare in constant time, refuse stale timestamps."""
    if not timestamp.isdigit():
        return False
    ts = int(timestamp)
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)


def backoff_s(
    attempts: int, base_s: float, cap_s: float, rand: Callable[[], float] = random.random
) -> float:
    """Seconds before retry number ``attempts`` (1 after the first failure): exponential,
    capped, with "equal jitter" (half fixed, half random) so receivers that failed
    together are not retried in lockstep, yet no retry comes sooner than half its step."""
    step = min(cap_s, base_s * 2 ** max(0, attempts - 1))
    return step / 2 + rand() * step / 2


# -- the tables and the commands over them ---------------------------------------------


def ensure_schema(dsn: str) -> None:
    with ddl_lock(dsn), psycopg.connect(dsn, autocommit=True) as conn:
        with conn.transaction():
            # webhooks references organizations: make sure it exists, under tenancy's lock.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('leadscore.tenancy.schema'))")
            conn.execute(TENANCY_DDL)
        conn.execute(SCHEMA_DDL)


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
) -> tuple[Webhook, str]:
    """A new webhook and its secret (shown once). It receives events stored after
    ``from_position`` (the log's head now), not the org's whole history."""
    if not url.startswith(("http://", "https://")) or len(url) > 2048:
        raise WebhookError(f"not an http(s) URL: {url!r}")
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    try:
        row = conn.execute(
            "INSERT INTO webhooks (org_id, url, secret, event_types, from_position) "
            "VALUES (%s, %s, %s, %s, %s) "
            "RETURNING id, org_id, url, event_types, active, created_at",
            (org_id, url, secret, list(event_types), from_position),
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


# -- the dispatcher --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attempt:
    status: int | None  # the HTTP status, None when no answer came
    error: str | None  # None when delivered


Post = Callable[[str, bytes, dict[str, str], float], Attempt]


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A redirect is an answer we do not follow: a signed POST must not be re-sent
    # elsewhere (and urllib would turn it into a GET). It counts as a failed attempt.
    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirects)


def http_post(url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> Attempt:
    """One POST; any 2xx delivers, anything else (status, timeout, refusal) is an error."""
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with _opener.open(req, timeout=timeout_s) as resp:
            resp.read(65536)  # let the connection close cleanly; the body is not used
            return Attempt(resp.status, None)
    except urllib.error.HTTPError as exc:
        exc.close()
        return Attempt(exc.code, f"HTTP {exc.code} {exc.reason}")
    except (OSError, ValueError) as exc:  # URLError, timeouts, refused, bad URL
        reason = getattr(exc, "reason", exc)
        return Attempt(None, f"{type(exc).__name__}: {reason}")


@dataclass(frozen=True)
class DispatchConfig:
    max_attempts: int = 8
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 3600.0
    timeout_s: float = 5.0
    batch: int = 100
    concurrency: int = 8

    @classmethod
    def from_settings(cls, s: Settings) -> DispatchConfig:
        return cls(
            max_attempts=s.webhook_max_attempts,
            backoff_base_s=s.webhook_backoff_base_ms / 1000,
            backoff_cap_s=s.webhook_backoff_cap_ms / 1000,
            timeout_s=s.webhook_timeout_ms / 1000,
            batch=s.webhook_batch,
            concurrency=s.webhook_concurrency,
        )

    @property
    def lease_s(self) -> float:
        # A claimed row is due again after this: longer than any POST may take.
        return self.timeout_s * 2 + 30


class WebhookDispatcher:
    def __init__(
        self,
        store: LeadStore,
        dsn: str,
        config: DispatchConfig | None = None,
        post: Post = http_post,
        *,
        log_batch: int = 1000,
    ) -> None:
        ensure_schema(dsn)
        self.store = store
        self.config = config = config or DispatchConfig()
        self.post = post
        self.log_batch = log_batch
        self.tracking = Tracking(dsn, TRACKING_NAME)
        self.pool = ThreadPoolExecutor(config.concurrency, thread_name_prefix="webhook-post")

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.tracking.close()

    def __enter__(self) -> WebhookDispatcher:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def conn(self) -> psycopg.Connection[Any]:
        return self.tracking.conn

    def enqueue_once(self) -> int:
        """Turn the next batch of stored scores into pending deliveries; returns how many
        stored scores were read (0: caught up)."""
        position = self.tracking.get()
        notes = self.store.notifications(position, self.log_batch, topics=[SCORED_TOPIC])
        if not notes:
            return 0
        hooks: dict[str, list[tuple[int, int, list[str]]]] = {}
        for hook_id, org, types, start in self.conn.execute(
            "SELECT id, org_id, event_types, from_position FROM webhooks WHERE active"
        ):
            hooks.setdefault(org, []).append((hook_id, start, types))
        rows = []
        for note in notes if hooks else ():  # no webhook anywhere: nothing to decode
            event = self.store.to_event(note)
            for hook_id, start, types in hooks.get(event.org_id, ()):
                if note.id <= start:
                    continue
                for record in score_records(event, note.id):
                    if record["event_type"] in types:
                        rows.append(
                            (hook_id, event.org_id, record["event_id"], record["event_type"],
                             Jsonb(record, dumps=_json))
                        )  # fmt: skip
        with self.conn.transaction(), self.conn.cursor() as cur:
            if rows:
                cur.executemany(
                    "INSERT INTO webhook_deliveries "
                    "(webhook_id, org_id, event_id, event_type, payload) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (webhook_id, event_id) DO NOTHING",
                    rows,
                )
            self.tracking.set(notes[-1].id)  # same connection, so same transaction
        return len(notes)

    def send_once(self) -> int:
        """POST the due deliveries (up to a batch); returns how many were attempted."""
        c = self.config
        with self.conn.cursor(row_factory=dict_row) as cur:
            due = cur.execute(
                "UPDATE webhook_deliveries d "
                "SET next_attempt_at = now() + make_interval(secs => %s) "
                "FROM webhooks w WHERE w.id = d.webhook_id AND d.id IN ("
                "  SELECT id FROM webhook_deliveries WHERE status = 'pending' "
                "  AND next_attempt_at <= now() ORDER BY next_attempt_at LIMIT %s "
                "  FOR UPDATE SKIP LOCKED) "
                "RETURNING d.id, d.event_id, d.event_type, d.payload, d.attempts, "
                "d.created_at, w.url, w.secret",
                (c.lease_s, c.batch),
            ).fetchall()
        if not due:
            return 0
        for row, attempt in zip(due, self.pool.map(self._attempt, due), strict=True):
            self._record(row, attempt)
        return len(due)

    def _attempt(self, row: dict[str, Any]) -> Attempt:
        body = orjson.dumps(row["payload"])
        ts = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "leadscore-webhooks/1",
            "X-Leadscore-Event-Id": row["event_id"],
            "X-Leadscore-Event-Type": row["event_type"],
            TIMESTAMP_HEADER: str(ts),
            SIGNATURE_HEADER: sign(row["secret"], ts, body),
        }
        with metrics.WEBHOOK_REQUEST_SECONDS.time():
            return self.post(row["url"], body, headers, self.config.timeout_s)

    def _record(self, row: dict[str, Any], attempt: Attempt) -> None:
        c = self.config
        attempts = row["attempts"] + 1
        if attempt.error is None:
            done = self.conn.execute(
                "UPDATE webhook_deliveries SET status = 'delivered', attempts = %s, "
                "last_status = %s, last_error = NULL, next_attempt_at = NULL, "
                "delivered_at = now() WHERE id = %s RETURNING delivered_at",
                (attempts, attempt.status, row["id"]),
            ).fetchone()
            metrics.WEBHOOK_DELIVERIES.labels("delivered").inc()
            if done is not None:
                latency = (done[0] - row["created_at"]).total_seconds()
                metrics.WEBHOOK_DELIVERY_LATENCY.observe(max(0.0, latency))
            return
        error = attempt.error[:ERROR_LENGTH]
        if attempts >= c.max_attempts:
            self.conn.execute(
                "UPDATE webhook_deliveries SET status = 'dead', attempts = %s, "
                "last_status = %s, last_error = %s, next_attempt_at = NULL WHERE id = %s",
                (attempts, attempt.status, error, row["id"]),
            )
            metrics.WEBHOOK_DELIVERIES.labels("dead").inc()
            log.warning("webhook delivery dead", delivery=row["id"], error=error)
            return
        self.conn.execute(
            "UPDATE webhook_deliveries SET attempts = %s, last_status = %s, last_error = %s, "
            "next_attempt_at = now() + make_interval(secs => %s) WHERE id = %s",
            (
                attempts,
                attempt.status,
                error,
                backoff_s(attempts, c.backoff_base_s, c.backoff_cap_s),
                row["id"],
            ),
        )
        metrics.WEBHOOK_DELIVERIES.labels("retried").inc()

    def run_once(self) -> int:
        """Both steps until neither has work; returns deliveries attempted (for tests)."""
        while self.enqueue_once():
            pass
        sent = 0
        while n := self.send_once():
            sent += n
        return sent

    def run(self, stop: threading.Event, idle_wait: float = 0.2) -> None:
        """Dispatch until ``stop`` is set: get elected, then enqueue and send in turn."""
        while not stop.is_set():
            try:
                if not self.tracking.try_lock():
                    stop.wait(1.0)
                    continue
                log.info("webhook dispatcher elected", position=self.tracking.get())
                while not stop.is_set():
                    busy = self.enqueue_once() + self.send_once()
                    if not busy:
                        stop.wait(idle_wait)
            except DATABASE_UNAVAILABLE as exc:
                # The lock went with the connection: reconnect and stand again.
                log.warning("webhook dispatcher lost PostgreSQL, reconnecting", error=str(exc))
                stop.wait(1.0)
                self.tracking.reconnect()


def _json(value: Any) -> str:
    # orjson writes datetimes as RFC 3339 strings; jsonb keeps them as such.
    return orjson.dumps(value).decode()


def start_dispatcher_thread(
    store: LeadStore, settings: Settings, stop: threading.Event
) -> threading.Thread:
    """The worker's webhook dispatcher, in a thread beside the relay's."""

    def target() -> None:
        while not stop.is_set():
            try:
                dispatcher = WebhookDispatcher(
                    store, settings.pg_dsn, DispatchConfig.from_settings(settings)
                )
                break
            except DATABASE_UNAVAILABLE as exc:  # a worker may start before PostgreSQL
                log.warning("webhook dispatcher waiting for PostgreSQL", error=str(exc))
                stop.wait(1.0)
        else:
            return
        try:
            with dispatcher:
                dispatcher.run(stop)
        except Exception:
            log.exception("webhook dispatcher stopped")

    thread = threading.Thread(target=target, name="webhook-dispatcher", daemon=True)
    thread.start()
    return thread
