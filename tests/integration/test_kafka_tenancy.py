"""Kafka as a tenant boundary, on the real SASL/SCRAM broker with ACLs: a tenant's
producer writes only its org's topic, and the gate lets through only that org's events."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from rich.console import Console
from typer.testing import CliRunner

from adapters import kafka_access, tenancy
from adapters.settings import Settings, get_settings, settings_env
from adapters.topics import org_topic
from devtools.services import kafka as kafka_service
from domain.lead import lead_aggregate_id
from leadscore import cli_api
from streams.bootstrap import Engine, bootstrap
from streams.dlq import REASON, DeadLetterSink, PayloadStore, Reason, read_letters
from streams.gate import INGRESS_HEADER, Gate
from streams.relay import kafka_producer
from tests.support.factories import FixedScorer, activity, created
from tests.support.pipeline import encoded

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    e = bootstrap(settings, scorer=FixedScorer())
    yield e
    e.close()


def _register(settings: Settings, *org_ids: str) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(settings.pg_dsn)
        try:
            await tenancy.ensure_schema(conn)
            await tenancy.ensure_orgs(conn, org_ids)
        finally:
            await conn.close()

    asyncio.run(go())


def _as(settings: Settings, principal: str, password: str) -> dict[str, str]:
    return {**settings.kafka, "sasl.username": principal, "sasl.password": password}


def _produce(conf: dict[str, str], topic: str, values: list[bytes]) -> list[KafkaError | None]:
    """Produce as ``conf``'s principal; the delivery error of each message (None: stored)."""
    results: list[KafkaError | None] = []
    producer = Producer({**conf, "acks": "all", "message.timeout.ms": 10_000, "log_level": 0})
    for value in values:
        producer.produce(topic, value=value, on_delivery=lambda err, _m: results.append(err))
    producer.flush(20)
    return results


def _gate(engine: Engine) -> Gate:
    s = engine.settings
    producer = kafka_producer(s.kafka)
    return Gate(
        s.kafka,
        lead_events_topic=s.topic_lead_events,
        group=f"{s.consumer_group}-gate",
        catalog=engine.decoder,
        producer=producer,
        dead_letters=DeadLetterSink(producer, s.topic_dlq, payloads=PayloadStore(s.pg_dsn)),
        look_every_s=1.0,
    )


def _read(settings: Settings, topic: str, expected: int, timeout: float = 30) -> list:  # type: ignore[type-arg]
    consumer = Consumer(
        {
            **settings.kafka,
            "group.id": f"reader-{secrets.token_hex(4)}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    out = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(out) < expected:
            out += [m for m in consumer.consume(100, timeout=0.5) if not m.error()]
    finally:
        consumer.close()
    return out


def test_a_tenant_producer_writes_its_org_topic_only(settings: Settings, engine: Engine) -> None:
    tag = secrets.token_hex(3)
    acme, other = f"acme-{tag}", f"other-{tag}"
    principal = f"crm-{tag}"
    _register(settings, acme, other)
    password = kafka_access.grant_producer(settings, principal, acme)
    assert password  # a new user: its generated password, shown once
    # A second grant for the same user keeps its password (None: nothing generated).
    assert kafka_access.grant_producer(settings, principal, acme) is None
    tenant = _as(settings, principal, password)
    good = encoded(engine, [created(lead="lead-a", org=acme)])

    assert _produce(tenant, org_topic(settings.topic_lead_events, acme), good) == [None]
    # The shared topic and another org's topic: the broker refuses (ACL).
    kafka_access.grant_producer(settings, f"crm2-{tag}", other)  # makes other's topic
    for topic in (settings.topic_lead_events, org_topic(settings.topic_lead_events, other)):
        (err,) = _produce(tenant, topic, good)
        assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, topic
    # A wrong password does not get in at all.
    (err,) = _produce(
        _as(settings, principal, "wrong"), org_topic(settings.topic_lead_events, acme), good
    )
    assert err is not None

    grants = {(g.principal, g.org_id) for g in kafka_access.producer_grants(settings)}
    assert {(principal, acme), (f"crm2-{tag}", other)} <= grants
    assert kafka_access.revoke_producer(settings, principal, acme) == 2
    assert (principal, acme) not in {
        (g.principal, g.org_id) for g in kafka_access.producer_grants(settings)
    }
    (err,) = _produce(tenant, org_topic(settings.topic_lead_events, acme), good)
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_the_gate_forwards_its_orgs_events_and_dead_letters_the_rest(
    settings: Settings, engine: Engine
) -> None:
    tag = secrets.token_hex(3)
    acme, other = f"acme-{tag}", f"other-{tag}"
    principal = f"crm-{tag}"
    _register(settings, acme, other)
    password = kafka_access.grant_producer(settings, principal, acme)
    assert password
    values = encoded(
        engine,
        [
            created(lead="lead-1", org=acme),
            created(lead="lead-x", org=other),  # another org's lead-event on acme's topic
            activity(lead="lead-1", org=acme),
        ],
    )
    topic = org_topic(settings.topic_lead_events, acme)
    assert _produce(_as(settings, principal, password), topic, [*values, b"not avro"]) == [None] * 4

    gate = _gate(engine)
    try:
        passed, deadline = 0, time.monotonic() + 60
        while passed < 4 and time.monotonic() < deadline:
            passed += gate.step(timeout=0.5)
    finally:
        gate.close()
    assert passed == 4

    forwarded = _read(settings, settings.topic_lead_events, 2)
    assert sorted(m.value() for m in forwarded) == sorted([values[0], values[2]])
    assert {m.key() for m in forwarded} == {b"lead-1"}
    assert all(dict(m.headers())[INGRESS_HEADER].startswith(topic.encode()) for m in forwarded)
    letters = read_letters(settings.kafka, settings.topic_dlq)
    reasons = sorted(letter.header(REASON) for letter in letters)
    assert reasons == sorted([Reason.ORG_NOT_ALLOWED.value, Reason.UNDECODABLE.value])
    refused = next(x for x in letters if x.header(REASON) == "org_not_allowed")
    assert refused.value == values[1]  # kept byte for byte, for a replay after a fix
    # Both letters came in on acme's topic: acme's in the dead-letter log, whatever the
    # record claims (or if nothing decodes).
    with psycopg.connect(settings.pg_dsn) as conn:
        logged = conn.execute("SELECT org_id, reason FROM dead_letter_log ORDER BY 2").fetchall()
    assert logged == [(acme, "org_not_allowed"), (acme, "undecodable")]

    # The engine stores what the gate forwarded: acme's lead, not other's.
    engine.processor.process([m.value() for m in forwarded])
    ours, theirs = lead_aggregate_id(acme, "lead-1"), lead_aggregate_id(other, "lead-x")
    found = engine.store.load([ours, theirs])
    assert found[ours] is not None and found[theirs] is None


def test_the_gate_picks_up_a_grant_made_while_it_runs(settings: Settings, engine: Engine) -> None:
    """The gate subscribes to org topics by name, listing the broker's topics every
    ``look_every_s`` (1 s here): a topic granted after it started is consumed,
    from its first message, without a restart."""
    tag = secrets.token_hex(3)
    first, later = f"first-{tag}", f"later-{tag}"
    _register(settings, first, later)
    assert kafka_access.grant_producer(settings, f"crm-{tag}", first)
    gate = _gate(engine)
    try:
        gate.step(timeout=0.1)
        assert org_topic(settings.topic_lead_events, first) in gate.subscribed
        assert org_topic(settings.topic_lead_events, later) not in gate.subscribed

        password = kafka_access.grant_producer(settings, f"crm2-{tag}", later)
        assert password
        values = encoded(engine, [created(lead="lead-9", org=later)])
        topic = org_topic(settings.topic_lead_events, later)
        assert _produce(_as(settings, f"crm2-{tag}", password), topic, values) == [None]
        passed, deadline = 0, time.monotonic() + 60
        while passed < 1 and time.monotonic() < deadline:
            passed += gate.step(timeout=0.5)
        assert topic in gate.subscribed
    finally:
        gate.close()
    assert passed == 1
    # The shared topic holds other tests' events too: read until this one is seen.
    consumer = Consumer(
        {**settings.kafka, "group.id": f"reader-{tag}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([settings.topic_lead_events])
    seen, deadline = False, time.monotonic() + 30
    try:
        while not seen and time.monotonic() < deadline:
            seen = any(m.value() == values[0] for m in consumer.consume(100, timeout=0.5))
    finally:
        consumer.close()
    assert seen


def test_grant_producer_command(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    tag = secrets.token_hex(3)
    org = f"acme-{tag}"
    _register(settings, org)
    env = settings_env(settings)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    monkeypatch.setattr(cli_api, "console", Console(width=250))
    runner, orgs = CliRunner(), cli_api.orgs_app
    result = runner.invoke(orgs, ["grant-producer", f"crm-{tag}", "--org", org], env=env)
    assert result.exit_code == 0, result.output
    password = result.output.strip().splitlines()[-1]
    assert len(password) >= 24
    listed = runner.invoke(orgs, ["producers"], env=env, terminal_width=200)
    assert f"User:crm-{tag}" in listed.output and org in listed.output
    # An org nobody registered: refused before anything is made in Kafka.
    refused = runner.invoke(orgs, ["grant-producer", f"crm-{tag}", "--org", "nope"], env=env)
    assert refused.exit_code == 1 and "not registered" in refused.output
    bad = runner.invoke(orgs, ["grant-producer", "a b", "--org", org], env=env)
    assert bad.exit_code == 1 and "principal" in bad.output
    get_settings.cache_clear()


def test_a_settings_typo_in_the_protocol_fails_clearly(settings: Settings) -> None:
    from streams.worker import faust_credentials

    with pytest.raises(ValueError, match="security protocol"):
        faust_credentials({**settings.kafka, "security.protocol": "SASL_PLAIN"})
    plain = dataclasses.replace(settings, kafka_security_protocol="PLAINTEXT")
    assert "sasl.username" not in plain.kafka
    with pytest.raises(KafkaException):
        Consumer({**plain.kafka, "group.id": "x"}).list_topics(timeout=3)


def test_a_subscriber_reads_its_orgs_score_events_only(settings: Settings, engine: Engine) -> None:
    tag = secrets.token_hex(3)
    acme, other = f"acme-{tag}", f"other-{tag}"
    reader = f"dash-{tag}"
    _register(settings, acme, other)
    password = kafka_access.grant_subscriber(settings, reader, acme)
    assert password
    engine.processor.process(
        encoded(engine, [created(lead="a1", org=acme), created(lead="o1", org=other)])
    )
    with engine.relay() as relay:
        while relay.publish_once():
            pass
    mine = org_topic(settings.topic_score_events, acme)
    as_reader = {**_as(settings, reader, password), "group.id": f"{reader}-1"}
    consumer = Consumer({**as_reader, "auto.offset.reset": "earliest", "log_level": 0})
    consumer.subscribe([mine])
    got: list = []  # type: ignore[type-arg]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not got:
        got += [m for m in consumer.consume(10, timeout=0.5) if not m.error()]
    consumer.close()
    assert got and {m.key() for m in got} == {f"{acme}/a1".encode()}
    # Every org's score-events stay on the shared topic, which the reader may not read,
    # nor another group's name.
    for topic, group in ((settings.topic_score_events, f"{reader}-2"), (mine, "someone-else")):
        c = Consumer({**as_reader, "group.id": group, "auto.offset.reset": "earliest"})
        c.subscribe([topic])
        errors = []
        end = time.monotonic() + 15
        while time.monotonic() < end and not errors:
            errors += [m.error() for m in c.consume(10, timeout=0.5) if m.error()]
        c.close()
        assert errors and errors[0].code() in (
            KafkaError.TOPIC_AUTHORIZATION_FAILED,
            KafkaError.GROUP_AUTHORIZATION_FAILED,
        ), (topic, group, errors)


def test_the_engines_clients_speak_sasl_ssl(settings: Settings, tmp_path: Path) -> None:
    """The local broker's TLS listener (kafka.tls_port, a CA of its own): the settings a
    managed Kafka takes (SASL_SSL and a CA) carry confluent-kafka and Faust through it."""
    tls = dataclasses.replace(
        settings,
        kafka_bootstrap=f"127.0.0.1:{kafka_service.tls_port(settings)}",
        kafka_security_protocol="SASL_SSL",
        kafka_ssl_ca_location=str(kafka_service.tls_files(settings).ca),
    )
    assert _produce(tls.kafka, tls.topic_lead_events, [b"a", b"b", b"c"]) == [None] * 3
    # Without the CA the broker's certificate is not trusted.
    untrusting = {**tls.kafka, "ssl.ca.location": certifi_or_system()}
    (err,) = _produce(untrusting, tls.topic_lead_events, [b"x"])
    assert err is not None

    env = {**os.environ, **settings_env(tls), "PYTHONPATH": str(Path(__file__).parents[2])}
    log = (tmp_path / "probe.log").open("wb")
    probe = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.faust_probe", tls.topic_lead_events,
         tls.consumer_group, str(tmp_path)],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 90
        while len(seen) < 3 and time.monotonic() < deadline:
            assert probe.poll() is None, (tmp_path / "probe.log").read_text()[-3000:]
            time.sleep(0.5)
            path = tmp_path / "seen.jsonl"
            seen = (
                [json.loads(x)["v"] for x in path.read_text().splitlines()] if path.exists() else []
            )
    finally:
        os.killpg(probe.pid, signal.SIGTERM)
        probe.wait(timeout=60)
        log.close()
    assert sorted(seen) == ["a", "b", "c"]


def certifi_or_system() -> str:
    """A CA bundle that does not hold the dev broker's CA: the system's."""
    import ssl

    return ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"


def test_a_gate_with_no_org_topic_stops_when_told(engine: Engine) -> None:
    """With no org topic to consume the gate waits as a consume would; a stop ends that
    wait at once instead of after the step's timeout (here 30 s)."""
    s = engine.settings
    producer = kafka_producer(s.kafka)
    gate = Gate(
        s.kafka,
        lead_events_topic=f"no-such-lead-events-{secrets.token_hex(3)}",
        group=f"{s.consumer_group}-gate-{secrets.token_hex(3)}",
        catalog=engine.decoder,
        producer=producer,
        dead_letters=DeadLetterSink(producer, s.topic_dlq, payloads=PayloadStore(s.pg_dsn)),
    )
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    try:
        assert gate.step(timeout=30, stop=stop) == 0
    finally:
        gate.close()
    assert gate.subscribed == frozenset()
    assert stop.is_set() and time.monotonic() - started < 10
