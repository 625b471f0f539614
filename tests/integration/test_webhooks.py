"""Webhooks end to end: the real engine stores scores, the dispatcher POSTs them to a real
HTTP receiver on a free port that checks every signature; PostgreSQL holds the rest."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import psycopg
import pytest
import standardwebhooks
from typer.testing import CliRunner

from adapters import tenancy, webhooks
from adapters.eventstore import SCORED_TOPIC, open_store
from adapters.settings import Settings
from adapters.webhook_secrets import SECRET_PREFIX, SecretBox
from domain.events import ActivityKind
from domain.transitions import DISQUALIFIED, GRADE_CHANGED, QUALIFIED, TYPED_EVENTS
from leadscore import cli_webhooks
from streams import webhook_dispatcher
from streams.bootstrap import bootstrap
from streams.relay import score_records
from streams.webhook_dispatcher import DispatchConfig, WebhookDispatcher
from tests.support.api import request, start_api, stop_api, wait_ready
from tests.support.factories import FixedScorer, activity, created
from tests.support.net import free_port, http_server
from tests.support.pipeline import encoded

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The dev allowances: these receivers listen on 127.0.0.1 over plain http
    (tests/integration/test_webhook_guard.py proves the production default refuses)."""
    return dataclasses.replace(settings, webhooks_allow_http=True, webhooks_allow_private=True)


FAILS_FIRST = 2  # the flaky receiver fails each event's first 2 requests
MAX_ATTEMPTS = 3
# Retries due within milliseconds, so a test walks the whole schedule quickly.
FAST = DispatchConfig(
    max_attempts=MAX_ATTEMPTS,
    backoff_base_s=0.001,
    backoff_cap_s=0.01,
    policy=webhooks.UrlPolicy(allow_http=True, allow_private=True),
)


@dataclass
class Received:
    path: str
    event_id: str
    event_type: str
    body: dict[str, Any]
    signed: bool


@dataclass
class Receiver:
    """/ok answers 204; /flaky 500 for each event's first FAILS_FIRST requests; /down 500."""

    port: int
    got: list[Received] = field(default_factory=list)
    tries: Counter[tuple[str, str]] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    secrets: dict[str, str] = field(default_factory=dict)  # path -> its webhook's secret

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def delivered(self, path: str) -> list[Received]:
        return [r for r in self.got if r.path == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(free_port())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            event_id = self.headers["X-Leadscore-Event-Id"]
            # What a receiver does: verify the raw bytes before trusting anything, here
            # with the Standard Webhooks reference library.
            try:
                standardwebhooks.Webhook(state.secrets[self.path]).verify(
                    raw, dict(self.headers.items())
                )
                signed = self.headers["webhook-id"] == event_id
            except (KeyError, standardwebhooks.WebhookVerificationError):
                signed = False
            with state.lock:
                state.tries[(self.path, event_id)] += 1
                n = state.tries[(self.path, event_id)]
                ok = self.path == "/ok" or (self.path == "/flaky" and n > FAILS_FIRST)
                if ok:
                    state.got.append(
                        Received(
                            self.path,
                            event_id,
                            self.headers["X-Leadscore-Event-Type"],
                            orjson.loads(raw),
                            signed and self.headers["Content-Type"] == "application/json",
                        )
                    )
            self.send_response(204 if ok else 500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    with http_server(Handler, state.port):
        yield state


def register_orgs(s: Settings, *orgs: str) -> dict[str, str]:
    """The orgs, each with an API key."""

    async def go() -> dict[str, str]:
        conn = await asyncpg.connect(s.pg_dsn)
        try:
            await tenancy.ensure_schema(conn)
            keys = {}
            for org in orgs:
                await tenancy.create_org(conn, org, org)
                keys[org] = (await tenancy.create_api_key(conn, org))[1]
            return keys
        finally:
            await conn.close()

    return asyncio.run(go())


def add_hook(
    s: Settings, org: str, receiver: Receiver, path: str, types: list[str] | None = None
) -> int:
    url = receiver.url(path)
    webhooks.ensure_schema(s.pg_dsn)
    store = open_store(s.pg_dsn, cache_size=0)
    try:
        head = store.max_position()
    finally:
        store.close()
    with psycopg.connect(s.pg_dsn, autocommit=True) as conn:
        hook, secret = webhooks.add_webhook(
            conn,
            org,
            url,
            types or list(TYPED_EVENTS),
            head,
            policy=webhooks.policy_from_settings(s),
            box=SecretBox.from_settings(s),
        )
    receiver.secrets[path] = secret
    return hook.id


def score_leads(s: Settings, rules: Path) -> None:
    """Qualification moments in two orgs: org-1 "a" climbs lead -> mql -> sql, "s" is a
    student (disqualified); org-2 "b" climbs to mql."""
    (rules / "org-1.yaml").write_text(
        "version: 1\nthresholds: {mql: 25, sql: 45}\ndisqualify: {titles: ['student']}\n"
    )
    (rules / "org-2.yaml").write_text("version: 1\nthresholds: {mql: 25, sql: 45}\n")
    e = bootstrap(dataclasses.replace(s, scoring_config_dir=str(rules)), scorer=FixedScorer())
    demo = ActivityKind.DEMO_REQUEST
    try:
        e.processor.process(
            encoded(
                e,
                [
                    created(lead="a"),
                    created(lead="s", title="Student"),
                    created(lead="b", org="org-2"),
                ],
            )
        )
        e.processor.process(encoded(e, [activity(demo, lead="a"), activity(demo, "b", "org-2")]))
        e.processor.process(encoded(e, [activity(demo, lead="a")]))
    finally:
        e.close()


def typed_events(s: Settings) -> dict[str, dict[str, str]]:
    """org -> {event_id: event_type} of every typed score-event, from the event store."""
    store = open_store(s.pg_dsn, cache_size=0)
    out: dict[str, dict[str, str]] = {}
    try:
        for note in store.all_notifications(topics=[SCORED_TOPIC]):
            event = store.to_event(note)
            for r in score_records(event, note.id):
                if r["event_type"] in TYPED_EVENTS:
                    out.setdefault(r["org_id"], {})[r["event_id"]] = r["event_type"]
    finally:
        store.close()
    return out


def deliveries(s: Settings) -> list[dict[str, Any]]:
    with psycopg.connect(s.pg_dsn, autocommit=True) as conn:
        return webhooks.list_deliveries(conn, limit=10_000)


def dispatch_until_settled(
    s: Settings, store_dsn: str, config: DispatchConfig = FAST, timeout: float = 30
) -> None:
    """A dispatcher run until nothing is pending (retries are due within milliseconds)."""
    store = open_store(store_dsn, cache_size=0)
    try:
        box = SecretBox.from_settings(s)
        with WebhookDispatcher(store, s.pg_dsn, box, config) as dispatcher:
            deadline = time.monotonic() + timeout
            while True:
                dispatcher.run_once()
                if not [d for d in deliveries(s) if d["status"] == "pending"]:
                    return
                assert time.monotonic() < deadline, "deliveries still pending"
                time.sleep(0.01)
    finally:
        store.close()


@pytest.fixture
def scored(
    settings: Settings, receiver: Receiver, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Three webhooks, then the engine's scores, then a dispatcher run to the end."""
    keys = register_orgs(settings, "org-1", "org-2", "org-3")
    hooks = {
        "flaky": add_hook(settings, "org-1", receiver, "/flaky"),
        "ok": add_hook(settings, "org-1", receiver, "/ok", [DISQUALIFIED]),
        "down": add_hook(settings, "org-2", receiver, "/down", [QUALIFIED]),
    }
    score_leads(settings, tmp_path_factory.mktemp("rules"))
    dispatch_until_settled(settings, settings.pg_dsn)
    return {"keys": keys, "hooks": hooks, "expected": typed_events(settings)}


def test_typed_events_are_delivered_signed_after_retries(
    settings: Settings, receiver: Receiver, scored: dict[str, Any]
) -> None:
    org1 = scored["expected"]["org-1"]
    assert set(org1.values()) == {QUALIFIED, DISQUALIFIED, GRADE_CHANGED}
    flaky = receiver.delivered("/flaky")
    # Every typed event of org-1 once, after FAILS_FIRST failures each, every one signed.
    assert {r.event_id: r.event_type for r in flaky} == org1
    assert len(flaky) == len(org1)
    assert all(r.signed for r in receiver.got)
    assert all(receiver.tries[("/flaky", r.event_id)] == FAILS_FIRST + 1 for r in flaky)
    body = flaky[0].body
    assert body["event_id"] == flaky[0].event_id and body["org_id"] == "org-1"
    assert {"lead_id", "new_score", "grade", "stage", "previous_stage", "top_factors"} <= set(body)
    assert isinstance(body["occurred_at"], str)  # times as ISO strings
    rows = [d for d in deliveries(settings) if d["webhook_id"] == scored["hooks"]["flaky"]]
    assert {d["status"] for d in rows} == {"delivered"}
    assert {d["attempts"] for d in rows} == {FAILS_FIRST + 1}
    assert all(d["last_status"] == 204 and d["delivered_at"] for d in rows)


def test_only_subscribed_types_are_delivered(receiver: Receiver, scored: dict[str, Any]) -> None:
    ok = receiver.delivered("/ok")
    want = {i: t for i, t in scored["expected"]["org-1"].items() if t == DISQUALIFIED}
    assert want and {r.event_id: r.event_type for r in ok} == want


def test_a_receiver_that_always_fails_gets_a_dead_letter_after_max_attempts(
    settings: Settings, receiver: Receiver, scored: dict[str, Any]
) -> None:
    rows = [d for d in deliveries(settings) if d["webhook_id"] == scored["hooks"]["down"]]
    want = {i for i, t in scored["expected"]["org-2"].items() if t == QUALIFIED}
    assert want and {d["event_id"] for d in rows} == want
    for d in rows:
        assert d["status"] == "dead" and d["attempts"] == MAX_ATTEMPTS
        # The tenant's error is a category, never the receiver's address or page.
        assert d["last_status"] == 500 and d["last_error"] == "delivery failed (HTTP 500)"
        assert d["next_attempt_at"] is None
        assert receiver.tries[("/down", d["event_id"])] == MAX_ATTEMPTS

    # Retrying a dead letter (the receiver is fixed: it now answers 2xx) delivers it.
    receiver.secrets["/ok"] = receiver.secrets["/down"]
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE webhooks SET url = %s WHERE id = %s", (receiver.url("/ok"),
                     scored["hooks"]["down"]))  # fmt: skip
        webhooks.retry_delivery(conn, rows[0]["id"])
        with pytest.raises(webhooks.WebhookError):
            webhooks.retry_delivery(conn, rows[0]["id"])  # pending, not dead
    dispatch_until_settled(settings, settings.pg_dsn)
    again = {d["id"]: d for d in deliveries(settings)}[rows[0]["id"]]
    assert again["status"] == "delivered" and again["attempts"] == 1


def test_restarted_dispatchers_do_not_duplicate_deliveries(
    settings: Settings, receiver: Receiver, scored: dict[str, Any]
) -> None:
    before = deliveries(settings)
    sent = len(receiver.got)
    dispatch_until_settled(settings, settings.pg_dsn)
    # As if a crash had lost the position: re-reading the whole log inserts nothing.
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE tracking SET position = 0 WHERE name = %s", (webhook_dispatcher.TRACKING_NAME,)
        )
    dispatch_until_settled(settings, settings.pg_dsn)
    assert deliveries(settings) == before
    assert len(receiver.got) == sent
    assert len({(d["webhook_id"], d["event_id"]) for d in before}) == len(before)


def test_a_new_webhook_gets_only_events_stored_after_it(
    settings: Settings, receiver: Receiver, scored: dict[str, Any]
) -> None:
    late = add_hook(settings, "org-1", receiver, "/late")
    dispatch_until_settled(settings, settings.pg_dsn)
    assert not [d for d in deliveries(settings) if d["webhook_id"] == late]


def test_removing_a_webhook_stops_it_and_kills_its_pending_deliveries(
    settings: Settings, receiver: Receiver, scored: dict[str, Any], tmp_path: Path
) -> None:
    hook = scored["hooks"]["ok"]
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = now() "
            "WHERE webhook_id = %s",
            (hook,),
        )
        assert webhooks.remove_webhook(conn, hook) >= 1
        assert hook not in {h.id for h in webhooks.list_webhooks(conn)}
        with pytest.raises(webhooks.WebhookError):
            webhooks.remove_webhook(conn, hook)
    rows = [d for d in deliveries(settings) if d["webhook_id"] == hook]
    assert {(d["status"], d["last_error"]) for d in rows} == {("dead", "webhook removed")}


def test_the_commands_add_list_show_deliveries_and_retry(
    settings: Settings, receiver: Receiver, scored: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_webhooks, "get_settings", lambda: settings)
    cli = CliRunner()

    def run(*args: str) -> str:
        result = cli.invoke(cli_webhooks.app, list(args), terminal_width=250)
        assert result.exit_code == 0, result.output
        return result.output

    added = run("add", "--org", "org-3", "--url", receiver.url("/ok"), "--events",
                "lead.qualified")  # fmt: skip
    assert added.strip().splitlines()[-1].startswith(SECRET_PREFIX)
    assert "org-3" in run("list", "--org", "org-3")
    assert "/flaky" not in run("list", "--org", "org-3")
    dead = run("deliveries", "--status", "dead")
    assert "HTTP 500" in dead and "org-2" in dead and "org-1 " not in dead
    bad = cli.invoke(cli_webhooks.app, ["add", "--org", "nope", "--url", receiver.url("/ok")])
    assert bad.exit_code == 1 and "no organization" in bad.output
    bad = cli.invoke(cli_webhooks.app, ["add", "--org", "org-3", "--url", "ftp://x"])
    assert bad.exit_code == 1 and "not an http(s) URL" in bad.output
    dead_id = next(d["id"] for d in deliveries(settings) if d["status"] == "dead")
    assert "pending again" in run("retry", str(dead_id))


def test_the_api_lists_each_orgs_deliveries_and_never_anothers(
    settings: Settings, scored: dict[str, Any], tmp_path: Path
) -> None:
    keys = scored["keys"]
    port = free_port()
    s = dataclasses.replace(settings, api_port=port)
    log = tmp_path / "api.log"
    process = start_api(s, log)
    try:
        wait_ready(port, process, log)

        def get(path: str, org: str) -> Any:
            reply = request(port, "GET", path, {"Authorization": f"Bearer {keys[org]}"})
            return reply.status, reply.body

        all_rows = deliveries(settings)
        for org in ("org-1", "org-2", "org-3"):
            mine = [d for d in all_rows if d["org_id"] == org]
            seen, cursor = [], ""
            while True:  # walk the pages
                status, page = get(f"/webhooks/deliveries?limit=2&cursor={cursor}", org)
                assert status == 200, page
                seen += page["items"]
                if page["next_cursor"] is None:
                    break
                cursor = page["next_cursor"]
            assert [d["id"] for d in seen] == [d["id"] for d in mine]  # newest first
            assert all(d["org_id"] == org and "secret" not in d for d in seen)
        org2 = [d for d in all_rows if d["org_id"] == "org-2"]
        status, page = get("/webhooks/deliveries?status=dead", "org-2")
        assert status == 200 and {d["id"] for d in page["items"]} == {d["id"] for d in org2}
        one = page["items"][0]
        assert one["attempts"] == MAX_ATTEMPTS and one["last_status"] == 500
        assert one["url"].endswith("/down") and one["event_type"] == QUALIFIED
        status, body = get(f"/webhooks/deliveries/{one['id']}", "org-2")
        assert status == 200 and body == one
        # Another org's delivery answers exactly like a missing one.
        for path in (f"/webhooks/deliveries/{one['id']}", "/webhooks/deliveries/99999999"):
            status, body = get(path, "org-1")
            assert status == 404 and body["error"] == "not_found"
        status, body = get("/webhooks/deliveries?status=lost&limit=0", "org-1")
        assert status == 422 and {d["parameter"] for d in body["details"]} == {"status", "limit"}
    finally:
        stop_api(process)
