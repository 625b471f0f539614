"""The webhook dispatcher: the typed score-events (lead.qualified, lead.disqualified,
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
   POSTs run in a pool and are recorded as each one ends: nothing waits for a whole
   batch, and no org holds more than ``org_concurrency`` POSTs, so a slow receiver
   delays only its own org. Each POST has one total deadline (adapters/webhook_http.py).

URLs must resolve to public addresses (checked when added and before each attempt, the
checked address pinned); ``last_error`` holds only a category, the detail is logged.
Requests are signed with Standard Webhooks headers (adapters/webhook_secrets.py). The
tables and the commands people run over them are adapters/webhooks.py's.
"""

from __future__ import annotations

import functools
import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
import structlog
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from adapters.eventstore import DATABASE_UNAVAILABLE, FORGOTTEN_TOPIC, SCORED_TOPIC, LeadStore
from adapters.positions import LogWaiter
from adapters.settings import Settings
from adapters.webhook_http import Attempt, UrlPolicy
from adapters.webhook_http import post as guarded_post
from adapters.webhook_secrets import SecretBox, SecretKeyError
from adapters.webhook_secrets import headers as signed_headers
from adapters.webhooks import ERROR_LENGTH, ensure_schema, policy_from_settings
from streams import metrics
from streams.relay import relay_tracking, score_records
from streams.tracing import TRACEPARENT, TraceContexts, Tracing, context_of, traceparent_of

log = structlog.get_logger(__name__)

TRACKING_NAME = "webhooks"


# -- the retry schedule -------------------------------------------------------------


def backoff_s(
    attempts: int, base_s: float, cap_s: float, rand: Callable[[], float] = random.random
) -> float:
    """Seconds before retry number ``attempts`` (1 after the first failure): exponential,
    capped, with "equal jitter" (half fixed, half random) so receivers that failed
    together are not retried in lockstep, yet no retry comes sooner than half its step."""
    step = min(cap_s, base_s * 2 ** max(0, attempts - 1))
    return step / 2 + rand() * step / 2


# -- the dispatcher --------------------------------------------------------------------


Post = Callable[[str, bytes, dict[str, str], float], Attempt]


@dataclass(frozen=True)
class DispatchConfig:
    max_attempts: int = 8
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 3600.0
    timeout_s: float = 5.0  # the whole POST: connect, TLS, send and answer
    batch: int = 100
    concurrency: int = 8  # POSTs in flight, all orgs together
    org_concurrency: int = 2  # POSTs in flight for one org
    policy: UrlPolicy = field(default_factory=UrlPolicy)
    # Woken by stored events, it reads the log at most once per this long (0: each time)
    linger_s: float = 0.0

    @classmethod
    def from_settings(cls, s: Settings) -> DispatchConfig:
        return cls(
            max_attempts=s.webhook_max_attempts,
            backoff_base_s=s.webhook_backoff_base_ms / 1000,
            backoff_cap_s=s.webhook_backoff_cap_ms / 1000,
            timeout_s=s.webhook_timeout_ms / 1000,
            batch=s.webhook_batch,
            concurrency=s.webhook_concurrency,
            org_concurrency=max(1, min(s.webhook_org_concurrency, s.webhook_concurrency)),
            policy=policy_from_settings(s),
            linger_s=s.webhook_linger_ms / 1000,
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
        box: SecretBox,
        config: DispatchConfig | None = None,
        post: Post | None = None,
        *,
        log_batch: int = 1000,
    ) -> None:
        ensure_schema(dsn, box)
        self.store = store
        self.box = box
        self.config = config = config or DispatchConfig()
        self.post: Post = post or functools.partial(guarded_post, policy=config.policy)
        self.log_batch = log_batch
        self.tracking = relay_tracking(dsn, TRACKING_NAME)
        self.pool = ThreadPoolExecutor(config.concurrency, thread_name_prefix="webhook-post")
        # POSTs in flight (claimed, not yet recorded) and per org; only this thread
        # touches them. Finished POSTs come back through `done`.
        self.in_flight = 0
        self.org_in_flight: Counter[str] = Counter()
        self.done: queue.SimpleQueue[tuple[dict[str, Any], Future[Attempt]]] = queue.SimpleQueue()
        self.tracing = Tracing(None)
        self.contexts: TraceContexts | None = None

    def use_tracing(self, tracing: Tracing, dsn: str) -> None:
        """POSTs carry the ``traceparent`` of their score's lead-event (streams/tracing.py)."""
        self.tracing = tracing
        if tracing.enabled:
            self.contexts = TraceContexts(dsn)

    def close(self) -> None:
        self.pool.shutdown(wait=True)  # each POST ends by its deadline
        self.record_finished()
        self.tracking.close()
        if self.contexts is not None:
            self.contexts.close()

    def __enter__(self) -> WebhookDispatcher:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def conn(self) -> psycopg.Connection[Any]:
        return self.tracking.conn

    def enqueue_once(self) -> int:
        """Turn the next batch of stored scores into pending deliveries; returns how many
        stored scores were read (0: caught up). A forgotten lead's deliveries, sent or
        not, are deleted when its LeadForgotten comes by (README, "Privacy")."""
        position = self.tracking.get()
        notes = self.store.notifications(
            position, self.log_batch, topics=[SCORED_TOPIC, FORGOTTEN_TOPIC]
        )
        if not notes:
            return 0
        forgotten = [self.store.to_event(n) for n in notes if n.topic == FORGOTTEN_TOPIC]
        notes_scored = [n for n in notes if n.topic != FORGOTTEN_TOPIC]
        hooks: dict[str, list[tuple[int, int, list[str]]]] = {}
        for hook_id, org, types, start in self.conn.execute(
            "SELECT id, org_id, event_types, from_position FROM webhooks WHERE active"
        ):
            hooks.setdefault(org, []).append((hook_id, start, types))
        rows = []
        for note in notes_scored if hooks else ():  # no webhook anywhere: nothing to decode
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
            for event in forgotten:
                cur.execute(
                    "DELETE FROM webhook_deliveries WHERE org_id = %s AND payload->>'lead_id' = %s",
                    (event.org_id, event.lead_id),
                )
            self.tracking.set(notes[-1].id)  # same connection, so same transaction
        return len(notes)

    def send_once(self) -> int:
        """Start POSTs of due deliveries, as many as the free slots allow (all orgs and
        each org); returns how many started. It does not wait for them."""
        c = self.config
        free = min(c.batch, c.concurrency - self.in_flight)
        if free <= 0:
            return 0
        # Orgs at their limit are not claimed for; the others at most their limit each,
        # oldest due first, so one org's backlog cannot fill the round.
        full = [org for org, n in self.org_in_flight.items() if n >= c.org_concurrency]
        with self.conn.cursor(row_factory=dict_row) as cur:
            due = cur.execute(
                "UPDATE webhook_deliveries d "
                "SET next_attempt_at = now() + make_interval(secs => %s) "
                "FROM webhooks w WHERE w.id = d.webhook_id AND d.id IN ("
                "  SELECT id FROM ("
                "    SELECT id, next_attempt_at, row_number() OVER ("
                "      PARTITION BY org_id ORDER BY next_attempt_at, id) AS n "
                "    FROM webhook_deliveries WHERE status = 'pending' "
                "    AND next_attempt_at <= now() AND NOT (org_id = ANY(%s::text[]))"
                "  ) ranked WHERE n <= %s ORDER BY next_attempt_at LIMIT %s) "
                "AND d.status = 'pending' "
                "RETURNING d.id, d.org_id, d.event_id, d.event_type, d.payload, d.attempts, "
                "d.created_at, w.url, w.secret",
                (c.lease_s, full, c.org_concurrency, free),
            ).fetchall()
        started = 0
        for row in due:
            if self.org_in_flight[row["org_id"]] >= c.org_concurrency:
                # Claimed past its org's limit (it had POSTs in flight): due again now.
                self.conn.execute(
                    "UPDATE webhook_deliveries SET next_attempt_at = now() WHERE id = %s",
                    (row["id"],),
                )
                continue
            self.in_flight += 1
            self.org_in_flight[row["org_id"]] += 1
            future = self.pool.submit(self._attempt, row)
            future.add_done_callback(functools.partial(self._finished, row))
            started += 1
        return started

    def _finished(self, row: dict[str, Any], future: Future[Attempt]) -> None:
        self.done.put((row, future))  # recorded by the dispatcher thread, on its connection

    def record_finished(self, wait_s: float = 0.0) -> int:
        """Record the POSTs that have ended (waiting up to ``wait_s`` for the first);
        returns how many."""
        n = 0
        block = wait_s > 0
        while True:
            try:
                row, future = self.done.get(block=block, timeout=wait_s if block else None)
            except queue.Empty:
                return n
            block = False
            self.in_flight -= 1
            self.org_in_flight[row["org_id"]] -= 1
            if self.org_in_flight[row["org_id"]] <= 0:
                del self.org_in_flight[row["org_id"]]
            try:
                attempt = future.result()
            except Exception as exc:  # a bug in the attempt, not the receiver's doing
                log.exception("webhook attempt failed unexpectedly", delivery=row["id"])
                attempt = Attempt(None, "delivery failed (internal error)", repr(exc))
            self._record(row, attempt)
            n += 1

    def _attempt(self, row: dict[str, Any]) -> Attempt:
        body = orjson.dumps(row["payload"])
        try:
            secret = self.box.open(row["secret"])
        except SecretKeyError as exc:
            return Attempt(None, "delivery failed (signing key unavailable)", str(exc))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "leadscore-webhooks/2",
            "X-Leadscore-Event-Id": row["event_id"],
            "X-Leadscore-Event-Type": row["event_type"],
            **signed_headers(secret, row["event_id"], body),
        }
        if self.contexts is None:
            with metrics.WEBHOOK_REQUEST_SECONDS.time():
                return self.post(row["url"], body, headers, self.config.timeout_s)
        with self.tracing.span(
            "webhook.post",
            context=context_of(self._trace_parent(row["payload"])) or Context(),
            kind=SpanKind.CLIENT,
            attributes={"leadscore.event_type": row["event_type"]},
        ) as span:
            assert span is not None
            headers[TRACEPARENT] = traceparent_of(span)
            with metrics.WEBHOOK_REQUEST_SECONDS.time():
                return self.post(row["url"], body, headers, self.config.timeout_s)

    def _trace_parent(self, payload: dict[str, Any]) -> str | None:
        cause = payload.get("caused_by_event_id")
        if self.contexts is None or not cause:
            return None
        try:
            return self.contexts.get([cause]).get(str(cause))
        except psycopg.Error as exc:  # delivered untraced rather than not delivered
            log.warning("trace context not read", error=type(exc).__name__)
            return None

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
        # The tenant reads `error` (a category); the operator's log gets the detail.
        error = attempt.error[:ERROR_LENGTH]
        log.info(
            "webhook attempt failed",
            delivery=row["id"],
            org_id=row["org_id"],
            attempt=attempts,
            error=error,
            detail=(attempt.detail or "")[:ERROR_LENGTH],
        )
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
        """Both steps until neither has work and nothing is in flight; returns deliveries
        attempted (for tests)."""
        while self.enqueue_once():
            pass
        sent = 0
        while True:
            started = self.send_once()
            sent += started
            self.record_finished()
            if not started and not self.in_flight:
                return sent
            if not started:
                self.record_finished(wait_s=0.05)

    def run(self, stop: threading.Event, idle_wait: float = 0.2) -> None:
        """Dispatch until ``stop`` is set: get elected, then enqueue and send in turn.

        Idle with POSTs in flight, it waits for one to end (at most ``idle_wait``); idle
        with none, until the store stores events (new deliveries) or a second passes
        (retries come due: a retry is at most a second late). Woken by stored events, it
        reads them at once after a quiet spell, else ``linger_s`` after its last such
        read: a busy stream's deliveries are enqueued in fewer, larger rounds."""
        waiter = LogWaiter(self.tracking.dsn)
        try:
            self._run(stop, waiter, idle_wait)
        finally:
            waiter.close()

    def _run(self, stop: threading.Event, waiter: LogWaiter, idle_wait: float) -> None:
        while not stop.is_set():
            try:
                if not self.tracking.try_lock():
                    stop.wait(1.0)
                    continue
                log.info("webhook dispatcher elected", position=self.tracking.get())
                waiter.listen()
                woken = -self.config.linger_s  # when the last read that a store woke began
                while not stop.is_set():
                    busy = self.enqueue_once() + self.send_once() + self.record_finished()
                    if busy:
                        continue
                    if self.in_flight:
                        self.record_finished(wait_s=idle_wait)  # until a POST ends
                    elif waiter.wait(stop):
                        stop.wait(max(0.0, woken + self.config.linger_s - time.monotonic()))
                        woken = time.monotonic()
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
        try:
            box = SecretBox.from_settings(settings)
        except SecretKeyError as exc:
            log.warning("webhook dispatcher not started", error=str(exc))
            return
        while not stop.is_set():
            try:
                dispatcher = WebhookDispatcher(
                    store, settings.pg_dsn, box, DispatchConfig.from_settings(settings)
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
