"""Webhooks that cannot be aimed inward or held up: the production URL policy, pinned
addresses, a total deadline, per-org concurrency, generic errors, secrets at rest.

Receivers are real HTTP servers on loopback; the slow one drips a byte a second.
"""

from __future__ import annotations

import dataclasses
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
import standardwebhooks
import structlog
from typer.testing import CliRunner

from adapters import tenancy, webhooks
from adapters.eventstore import open_store
from adapters.settings import Settings
from adapters.webhook_http import UrlPolicy, post
from adapters.webhook_secrets import SecretBox
from domain.transitions import QUALIFIED
from leadscore import cli_webhooks
from streams.webhook_dispatcher import DispatchConfig, WebhookDispatcher
from tests.support.net import free_port, http_server

pytestmark = pytest.mark.integration

DEV = UrlPolicy(allow_http=True, allow_private=True)
INWARD = [
    "http://127.0.0.1:5432/",
    "http://169.254.169.254/latest/meta-data/",
    "https://127.0.0.1:5432/",
    "https://169.254.169.254/latest/meta-data/",
    "https://10.1.2.3/",
    "https://100.64.0.1/",
    "https://[::1]/",
    "https://[::ffff:127.0.0.1]/",
    "https://localhost/",
]


@dataclass
class Sink:
    """A receiver on loopback: records what it got (verified with the reference library)."""

    port: int
    secret: str = ""
    got: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def sink() -> Iterator[Sink]:
    state = Sink(free_port())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            with state.lock:
                state.got.append((self.path, dict(self.headers.items()), raw))
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    with http_server(Handler, state.port):
        yield state


@pytest.fixture
def dripper() -> Iterator[int]:
    """A receiver that answers one byte a second, forever: the slowloris of receivers."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                conn.recv(65536)
                for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n":
                    if stop.wait(1.0):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:
                return

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield port
    stop.set()
    thread.join(2)
    listener.close()


def register(s: Settings, *orgs: str) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(s.pg_dsn)
        try:
            await tenancy.ensure_schema(conn)
            for org in orgs:
                await tenancy.create_org(conn, org, org)
        finally:
            await conn.close()

    import asyncio

    asyncio.run(go())


def dev(s: Settings) -> Settings:
    return dataclasses.replace(s, webhooks_allow_http=True, webhooks_allow_private=True)


def add(s: Settings, org: str, url: str, policy: UrlPolicy = DEV) -> tuple[int, str]:
    box = SecretBox.from_settings(dev(s))
    webhooks.ensure_schema(s.pg_dsn, box)
    with psycopg.connect(s.pg_dsn, autocommit=True) as conn:
        hook, secret = webhooks.add_webhook(conn, org, url, [QUALIFIED], 0, policy=policy, box=box)
    return hook.id, secret


def pending(s: Settings, hook_id: int, org: str, n: int) -> list[int]:
    """n due deliveries of ``hook_id``, written as the enqueue step would."""
    ids = []
    with psycopg.connect(s.pg_dsn, autocommit=True) as conn:
        for i in range(n):
            row = conn.execute(
                "INSERT INTO webhook_deliveries (webhook_id, org_id, event_id, event_type, "
                "payload) VALUES (%s, %s, %s, %s, %s) RETURNING id",
                (hook_id, org, f"evt-{hook_id}-{i}", QUALIFIED,
                 psycopg.types.json.Jsonb({"event_id": f"evt-{hook_id}-{i}", "n": i})),
            ).fetchone()  # fmt: skip
            assert row is not None
            ids.append(row[0])
    return ids


def rows(s: Settings) -> dict[int, dict[str, Any]]:
    with psycopg.connect(s.pg_dsn, autocommit=True) as conn:
        return {d["id"]: d for d in webhooks.list_deliveries(conn, limit=10_000)}


def test_the_production_default_refuses_inward_urls_from_the_command(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(settings, "org-1")
    # Production: no allowance, a real key.
    prod = dataclasses.replace(settings, webhook_secret_key=fernet_key())
    monkeypatch.setattr(cli_webhooks, "get_settings", lambda: prod)
    cli = CliRunner()
    for url in INWARD:
        out = cli.invoke(cli_webhooks.app, ["add", "--org", "org-1", "--url", url])
        assert out.exit_code == 1, (url, out.output)
        assert "public addresses" in out.output or "https" in out.output, out.output
    webhooks.ensure_schema(settings.pg_dsn)  # refused before the command touched it
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        assert webhooks.list_webhooks(conn, include_removed=True) == []
    # Without a key, production refuses to store a secret at all.
    monkeypatch.setattr(cli_webhooks, "get_settings", lambda: settings)
    out = cli.invoke(cli_webhooks.app, ["add", "--org", "org-1", "--url", "https://a.example/"])
    assert out.exit_code == 1 and "LEADSCORE_WEBHOOK_SECRET_KEY" in out.output


def fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def test_the_address_is_checked_again_at_connect_time_and_pinned(sink: Sink) -> None:
    body = b'{"x":1}'
    # Pinned: the name is only the Host header; the connection goes to the checked IP.
    got = post(
        f"http://hooks.example.test:{sink.port}/in",
        body,
        {"X-Test": "1"},
        5.0,
        DEV,
        resolver=lambda host, port: ["127.0.0.1"],
    )
    assert got.error is None and got.status == 204
    assert sink.got[-1][1]["Host"] == f"hooks.example.test:{sink.port}"
    # Rebinding: the name was public when added; now it answers loopback. Production
    # refuses before connecting, and the receiver on loopback hears nothing.
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])
    rebinding = UrlPolicy()
    from adapters.webhook_http import check_url

    assert check_url("https://hooks.example.test/", rebinding, lambda h, p: next(answers))
    before = len(sink.got)
    refused = post(
        f"https://hooks.example.test:{sink.port}/in",
        body,
        {},
        5.0,
        rebinding,
        resolver=lambda h, p: next(answers),
    )
    assert refused.error == "delivery failed (address not allowed)"
    assert len(sink.got) == before


def test_a_dripping_receiver_is_cut_off_at_the_deadline_and_the_tenant_sees_a_category(
    dripper: int,
) -> None:
    start = time.monotonic()
    got = post(f"http://127.0.0.1:{dripper}/", b"{}", {}, 1.5, DEV)
    took = time.monotonic() - start
    assert got.error == "delivery failed (timeout)" and got.status is None
    assert 1.4 <= took < 2.5, took  # one total deadline, not one per byte
    assert got.detail and "127.0.0.1" in got.detail  # the operator's detail


def test_one_slow_org_never_stops_another_orgs_deliveries(
    settings: Settings, sink: Sink, dripper: int
) -> None:
    register(settings, "slow", "fast")
    slow_hook, _ = add(settings, "slow", f"http://127.0.0.1:{dripper}/")
    fast_hook, fast_secret = add(settings, "fast", sink.url("/fast"))
    slow_ids = pending(settings, slow_hook, "slow", 6)
    config = DispatchConfig(
        max_attempts=1, timeout_s=3.0, concurrency=4, org_concurrency=2, policy=DEV
    )
    store = open_store(settings.pg_dsn, cache_size=0)
    stop = threading.Event()
    box = SecretBox.from_settings(dev(settings))
    try:
        with WebhookDispatcher(store, settings.pg_dsn, box, config) as dispatcher:
            thread = threading.Thread(target=dispatcher.run, args=(stop, 0.05), daemon=True)
            thread.start()
            time.sleep(0.5)  # the slow org's POSTs are in flight, dripping
            assert dispatcher.org_in_flight["slow"] == 2  # never more than its share
            fast_ids = pending(settings, fast_hook, "fast", 3)
            t0 = time.monotonic()
            while not all(rows(settings)[i]["status"] == "delivered" for i in fast_ids):
                assert time.monotonic() - t0 < 2.0, "the fast org waited for the slow one"
                time.sleep(0.02)
            fast_took = time.monotonic() - t0
            slow_states = {rows(settings)[i]["status"] for i in slow_ids}
            assert "pending" in slow_states  # still dripping while the fast org was served
            t1 = time.monotonic()
            while any(rows(settings)[i]["status"] == "pending" for i in slow_ids):
                assert time.monotonic() - t1 < 20, "slow deliveries never ended"
                time.sleep(0.1)
            stop.set()
            thread.join(10)
    finally:
        stop.set()
        store.close()
    assert fast_took < 2.0
    # Every slow delivery died of its deadline; the tenant reads a category only.
    for i in slow_ids:
        d = rows(settings)[i]
        assert (d["status"], d["last_error"]) == ("dead", "delivery failed (timeout)")
    # The fast org's requests verify with the reference library.
    for _, headers, raw in sink.got:
        standardwebhooks.Webhook(fast_secret).verify(raw, headers)


def test_a_name_that_resolves_slowly_is_cut_off_by_the_same_deadline(sink: Sink) -> None:
    # The tenant runs the DNS server of its webhook's name: a lookup that hangs must not
    # hold a delivery past its deadline.
    def slow(host: str, port: int) -> list[str]:
        time.sleep(3)
        return ["127.0.0.1"]

    start = time.monotonic()
    got = post(f"http://slow.example.test:{sink.port}/", b"{}", {}, 1.0, DEV, resolver=slow)
    assert got.error == "delivery failed (timeout)"
    assert time.monotonic() - start < 1.5
    assert not sink.got


def test_last_error_never_names_an_inner_address_and_the_log_does(settings: Settings) -> None:
    register(settings, "org-1")
    closed = free_port()  # nothing listens here: connection refused
    hook, _ = add(settings, "org-1", f"http://127.0.0.1:{closed}/")
    (one,) = pending(settings, hook, "org-1", 1)
    store = open_store(settings.pg_dsn, cache_size=0)
    config = DispatchConfig(max_attempts=1, policy=DEV)
    try:
        with (
            structlog.testing.capture_logs() as logs,
            WebhookDispatcher(store, settings.pg_dsn, SecretBox.from_settings(dev(settings)),
                              config) as dispatcher,
        ):  # fmt: skip
            dispatcher.run_once()
    finally:
        store.close()
    d = rows(settings)[one]
    assert d["last_error"] == "delivery failed (connection refused)"
    assert "127.0.0.1" not in d["last_error"] and str(closed) not in d["last_error"]
    failed = [e for e in logs if e["event"] == "webhook attempt failed"]
    assert failed and f"127.0.0.1:{closed}" in failed[0]["detail"]


def test_secrets_are_encrypted_at_rest_and_old_rows_are_migrated(
    settings: Settings, sink: Sink
) -> None:
    register(settings, "org-1")
    hook, secret = add(settings, "org-1", sink.url("/new"))
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        (stored,) = conn.execute("SELECT secret FROM webhooks WHERE id = %s", (hook,)).fetchone()
        assert stored.startswith("fernet:") and secret not in stored
        # A row as the previous release wrote it: the secret in plain text.
        plain = "whsec_" + "A" * 43
        (old,) = conn.execute(
            "INSERT INTO webhooks (org_id, url, secret, event_types) "
            "VALUES ('org-1', %s, %s, %s) RETURNING id",
            (sink.url("/old"), plain, [QUALIFIED]),
        ).fetchone()
    box = SecretBox.from_settings(dev(settings))
    webhooks.ensure_schema(settings.pg_dsn, box)  # what the dispatcher and CLI run
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        (sealed,) = conn.execute("SELECT secret FROM webhooks WHERE id = %s", (old,)).fetchone()
    assert sealed.startswith("fernet:") and plain not in sealed
    pending(settings, old, "org-1", 1)
    store = open_store(settings.pg_dsn, cache_size=0)
    try:
        with WebhookDispatcher(store, settings.pg_dsn, box, DispatchConfig(policy=DEV)) as d:
            d.run_once()
    finally:
        store.close()
    (path, headers, raw) = sink.got[-1]
    assert path == "/old"
    standardwebhooks.Webhook(plain).verify(raw, headers)  # the receiver's secret still works


def _tls_pair(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A CA and a certificate for hooks.example.test: (server context, client context)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("test CA")).issuer_name(name("test CA"))
        .public_key(ca_key.public_key()).serial_number(1)
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(name("hooks.example.test"))
        .issuer_name(ca.subject).public_key(key.public_key()).serial_number(2)
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("hooks.example.test")]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    pem = serialization.Encoding.PEM
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(pem))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    client = ssl.create_default_context(cadata=ca.public_bytes(pem).decode())
    return server, client


def test_https_connects_to_the_pinned_address_and_verifies_the_name(
    sink: Sink, tmp_path: Path
) -> None:
    server_tls, client_tls = _tls_pair(tmp_path)
    port = free_port()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            sink.got.append((self.path, dict(self.headers.items()), b""))
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.socket = server_tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    loopback = {"resolver": lambda host, p: ["127.0.0.1"], "tls": client_tls}
    try:
        # The certificate is checked against the URL's name, though the connection goes
        # to the address that name was resolved and checked to.
        ok = post(f"https://hooks.example.test:{port}/tls", b"{}", {}, 5.0, DEV, **loopback)
        assert ok.error is None and ok.status == 204
        assert sink.got[-1][0] == "/tls"
        assert sink.got[-1][1]["Host"] == f"hooks.example.test:{port}"
        # Another name on the same address: the certificate does not match it.
        wrong = post(f"https://other.example.test:{port}/tls", b"{}", {}, 5.0, DEV, **loopback)
        assert wrong.error == "delivery failed (TLS error)"
    finally:
        server.shutdown()
        server.server_close()
