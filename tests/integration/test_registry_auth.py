"""The schema registry's credentials (issue 15, item 5): writes need them, as Confluent's do.

Against the session's real registry: every write without or with wrong credentials gets
401 with a JSON body and changes nothing; reads stay open. A registry of our own started
with LEADSCORE_SCHEMA_REGISTRY_AUTH_READS=1 refuses reads without them too, and the
engine's clients (SchemaCatalog, confluent-kafka's client) work against it.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, SchemaRegistryError

from adapters.settings import ROOT, Settings, settings_env
from devtools.services.schema_registry import ping
from streams.codec import event_to_record
from streams.wire import LEAD_EVENT_SCHEMA, AvroTopic, RegistryAuthError, SchemaCatalog
from tests.support.factories import created
from tests.support.net import free_port
from tests.support.registry import basic, registry_conf, request

pytestmark = pytest.mark.integration

V1 = LEAD_EVENT_SCHEMA.read_text()
BREAKING = '{"type": "record", "name": "Probe", "fields": [{"name": "n", "type": "string"}]}'


@pytest.fixture
def subject(settings: Settings) -> str:
    name = f"auth-test-{secrets.token_hex(4)}-value"
    status, _, _ = request(settings, "POST", f"/subjects/{name}/versions", {"schema": V1})
    assert status == 200
    return name


def refusals(settings: Settings) -> dict[str, str | None]:
    user, password = settings.schema_registry_user, settings.schema_registry_password
    return {
        "none": None,
        "wrong password": basic(f"{user}:{password}x"),
        "wrong user": basic(f"{user}x:{password}"),
        "empty password": basic(f"{user}:"),
        "no colon": basic(user),
        "not base64": "Basic !!!",
        "bearer": f"Bearer {password}",
    }


def writes(subject: str) -> list[tuple[str, str, object]]:
    return [
        ("POST", f"/subjects/{subject}/versions", {"schema": BREAKING}),
        ("POST", f"/subjects/{subject}", {"schema": V1}),  # lookup: a POST, so a write
        ("POST", f"/compatibility/subjects/{subject}/versions/latest", {"schema": V1}),
        ("DELETE", f"/subjects/{subject}", None),
        ("PUT", f"/config/{subject}", {"compatibility": "NONE"}),
        ("PUT", "/config", {"compatibility": "NONE"}),
    ]


def test_every_write_without_good_credentials_is_401_json_and_changes_nothing(
    settings: Settings, subject: str
) -> None:
    for method, path, body in writes(subject):
        for why, header in refusals(settings).items():
            status, answer, headers = request(settings, method, path, body, authorization=header)
            assert status == 401, (method, path, why)
            assert answer == {
                "error_code": 401,
                "message": "Unauthorized: this request needs credentials",
            }
            assert headers["Content-Type"] == "application/vnd.schemaregistry.v1+json"
            assert headers["WWW-Authenticate"].startswith("Basic ")
    # Nothing changed: one version, no subject-level config, the global level as it was.
    _, versions, _ = request(settings, "GET", f"/subjects/{subject}/versions", authorization=None)
    assert versions == [1]
    assert request(settings, "GET", f"/config/{subject}", authorization=None)[0] == 404
    assert request(settings, "GET", "/config", authorization=None)[1] == {
        "compatibilityLevel": "BACKWARD"
    }
    # With the credentials, the same writes go through.
    status, _, _ = request(settings, "PUT", f"/config/{subject}", {"compatibility": "NONE"})
    assert status == 200
    status, _, _ = request(settings, "DELETE", f"/subjects/{subject}")
    assert status == 200


def test_reads_are_open_on_the_default_registry(settings: Settings, subject: str) -> None:
    status, versions, _ = request(
        settings, "GET", f"/subjects/{subject}/versions", authorization=None
    )
    assert (status, versions) == (200, [1])
    _, version, _ = request(settings, "GET", f"/subjects/{subject}/versions/1", authorization=None)
    schema_id = version["id"]
    status, answer, _ = request(settings, "GET", f"/schemas/ids/{schema_id}", authorization=None)
    assert status == 200 and "schema" in answer


def test_confluents_client_and_the_catalog_need_the_credentials_to_register(
    settings: Settings,
) -> None:
    subject = f"auth-client-{secrets.token_hex(4)}-value"
    user = settings.schema_registry_user
    for user_info in ("", f"{user}:wrong"):
        with SchemaRegistryClient(registry_conf(settings, user_info)) as client:
            with pytest.raises(SchemaRegistryError) as err:
                client.register_schema(subject, Schema(V1, "AVRO"))
            assert (err.value.http_status_code, err.value.error_code) == (401, 401)
        wrong = SchemaCatalog(settings.schema_registry_url, user_info=user_info)
        # Not the message's fault: a configuration error the worker pauses on, with a
        # message that names the settings to fix.
        with pytest.raises(RegistryAuthError, match="LEADSCORE_SCHEMA_REGISTRY_PASSWORD"):
            wrong.register(subject, V1)
    with SchemaRegistryClient(registry_conf(settings)) as client:
        schema_id = client.register_schema(subject, Schema(V1, "AVRO"))
    assert SchemaCatalog.from_settings(settings).register(subject, V1) == schema_id


@pytest.fixture
def closed_registry(settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    """A second registry on the session's PostgreSQL that asks for credentials on reads."""
    s = dataclasses.replace(
        settings,
        schema_registry_url=f"http://127.0.0.1:{free_port()}",
        schema_registry_auth_reads=True,
        schema_registry_password=secrets.token_urlsafe(12),
    )
    log = (tmp_path / "registry.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "devtools.schema_registry"],
        env={**os.environ, **settings_env(s)},
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not ping(s.schema_registry_url, s.schema_registry_user_info):
            assert proc.poll() is None, (tmp_path / "registry.log").read_text()
            assert time.monotonic() < deadline, "the registry did not start in 60 s"
            time.sleep(0.2)
        yield s
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_a_registry_with_auth_reads_refuses_reads_without_credentials(
    closed_registry: Settings, tmp_path: Path
) -> None:
    s = closed_registry
    assert not ping(s.schema_registry_url)  # the readiness probe without credentials
    for header in (None, basic(f"{s.schema_registry_user}:nope")):
        status, answer, _ = request(s, "GET", "/subjects", authorization=header)
        assert (status, answer["error_code"]) == (401, 401)
    # The engine's own catalog sends its credentials on reads as well as writes.
    catalog = SchemaCatalog.from_settings(s)
    topic = AvroTopic(catalog, f"auth-reads-{secrets.token_hex(4)}", LEAD_EVENT_SCHEMA)
    value = topic.encode(event_to_record(created()))
    assert SchemaCatalog.from_settings(s).decode(value)["event_type"] == "LeadCreated"
    outsider = SchemaCatalog(s.schema_registry_url)
    with pytest.raises(RegistryAuthError):
        outsider.decode(value)
    # The log names what was refused, never the credentials tried.
    log = (tmp_path / "registry.log").read_text()
    assert "schema registry refused a request" in log and "/subjects" in log
    assert "nope" not in log and s.schema_registry_password not in log
