"""The project's schema registry, spoken to as a Confluent registry, and the catalog on it."""

from __future__ import annotations

import copy
import json
import secrets
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, SchemaRegistryError

from adapters.settings import Settings
from streams.codec import event_to_record, record_to_event
from streams.wire import (
    LEAD_EVENT_SCHEMA,
    LEAD_EVENT_SCHEMA_V2,
    AvroTopic,
    RegistryUnavailableError,
    SchemaCatalog,
    SerializationError,
    UnknownSchemaError,
    encode,
)
from tests.support.factories import activity, created
from tests.support.registry import registry_conf, request

pytestmark = pytest.mark.integration

V1 = LEAD_EVENT_SCHEMA.read_text()
V2 = LEAD_EVENT_SCHEMA_V2.read_text()


def _breaking() -> str:
    schema = json.loads(V2)
    schema["fields"].append({"name": "tier", "type": "string"})
    return json.dumps(schema)


@pytest.fixture
def client(settings: Settings) -> Any:
    with SchemaRegistryClient(registry_conf(settings)) as c:
        yield c


@pytest.fixture
def subject() -> str:
    return f"registry-test-{secrets.token_hex(4)}-value"


def _request(settings: Settings, method: str, path: str, body: Any = None) -> tuple[int, Any, str]:
    status, answer, headers = request(settings, method, path, body)
    return status, answer, headers["Content-Type"]


def test_register_get_and_list_through_confluents_client(
    settings: Settings, client: Any, subject: str
) -> None:
    first = client.register_schema(subject, Schema(V1, "AVRO"))
    with SchemaRegistryClient(registry_conf(settings)) as other:
        # Same schema again (a fresh client, no cache) gives the same id.
        assert other.register_schema(subject, Schema(V1, "AVRO")) == first
    assert json.loads(client.get_schema(first).schema_str) == json.loads(V1)
    assert subject in client.get_subjects()
    assert client.get_versions(subject) == [1]

    assert client.test_compatibility(subject, Schema(V2, "AVRO")) is True
    second = client.register_schema(subject, Schema(V2, "AVRO"))
    assert second != first
    assert client.get_versions(subject) == [1, 2]
    latest = client.get_latest_version(subject)
    assert (latest.version, latest.schema_id) == (2, second)
    assert client.get_version(subject, 1).schema_id == first
    found = client.lookup_schema(subject, Schema(V1, "AVRO"))
    assert (found.version, found.schema_id) == (1, first)
    # v1 again is not a new version: it is already registered under this subject.
    assert client.register_schema(subject, Schema(V1, "AVRO")) == first
    assert client.get_versions(subject) == [1, 2]


def test_same_schema_in_two_subjects_shares_its_id(client: Any, subject: str) -> None:
    a = client.register_schema(subject, Schema(V1, "AVRO"))
    b = client.register_schema(subject.replace("-value", "-other-value"), Schema(V1, "AVRO"))
    assert a == b


def test_backward_incompatible_registration_is_refused_with_409(client: Any, subject: str) -> None:
    client.register_schema(subject, Schema(V1, "AVRO"))
    assert client.get_compatibility() == "BACKWARD"
    assert client.test_compatibility(subject, Schema(_breaking(), "AVRO")) is False
    with pytest.raises(SchemaRegistryError) as err:
        client.register_schema(subject, Schema(_breaking(), "AVRO"))
    assert (err.value.http_status_code, err.value.error_code) == (409, 409)
    assert "tier" in err.value.error_message
    assert client.get_versions(subject) == [1]
    # A subject-level NONE lets it through; the global level is untouched.
    assert client.set_compatibility(subject, "NONE") == {"compatibility": "NONE"}
    assert client.get_compatibility(subject) == "NONE"
    client.register_schema(subject, Schema(_breaking(), "AVRO"))
    assert client.get_versions(subject) == [1, 2]
    assert client.get_compatibility() == "BACKWARD"


def test_confluent_error_codes(settings: Settings, client: Any, subject: str) -> None:
    cases = [
        (lambda: client.get_schema(2_000_000_000), 404, 40403),
        (lambda: client.get_versions(subject), 404, 40401),
        (lambda: client.get_latest_version(subject), 404, 40401),
        (lambda: client.register_schema(subject, Schema('{"type": "nope"}', "AVRO")), 422, 42201),
        (lambda: client.register_schema(subject, Schema("{", "AVRO")), 422, 42201),
    ]
    for call, status, code in cases:
        with pytest.raises(SchemaRegistryError) as err:
            call()
        assert (err.value.http_status_code, err.value.error_code) == (status, code)
    client.register_schema(subject, Schema(V1, "AVRO"))
    with pytest.raises(SchemaRegistryError) as err:
        client.get_version(subject, 7)
    assert err.value.error_code == 40402
    with pytest.raises(SchemaRegistryError) as err:
        client.lookup_schema(subject, Schema(V2, "AVRO"))
    assert err.value.error_code == 40403
    status, body, content_type = _request(settings, "GET", f"/subjects/{subject}/versions/x")
    assert (status, body["error_code"]) == (422, 42202)
    assert content_type == "application/vnd.schemaregistry.v1+json"


def test_raw_api_shapes(settings: Settings, subject: str) -> None:
    status, body, content_type = _request(
        settings, "POST", f"/subjects/{subject}/versions", {"schema": V1, "schemaType": "AVRO"}
    )
    assert status == 200 and set(body) == {"id"}
    assert content_type == "application/vnd.schemaregistry.v1+json"
    schema_id = body["id"]
    # The registry keeps the text first registered for a schema (here perhaps the
    # engine's canonical form of the same schema): compare the schemas, not the text.
    _, by_id, _ = _request(settings, "GET", f"/schemas/ids/{schema_id}")
    assert set(by_id) == {"schema"} and json.loads(by_id["schema"]) == json.loads(V1)
    _, version, _ = _request(settings, "GET", f"/subjects/{subject}/versions/latest")
    assert json.loads(version.pop("schema")) == json.loads(V1)
    assert version == {"subject": subject, "version": 1, "id": schema_id}
    _, compat, _ = _request(
        settings,
        "POST",
        f"/compatibility/subjects/{subject}/versions/latest?verbose=true",
        {"schema": _breaking()},
    )
    assert compat["is_compatible"] is False and compat["messages"]
    assert _request(settings, "GET", "/config")[1] == {"compatibilityLevel": "BACKWARD"}
    status, body, _ = _request(settings, "GET", f"/config/{subject}")
    assert (status, body["error_code"]) == (404, 40408)
    assert _request(settings, "GET", f"/config/{subject}?defaultToGlobal=true")[1] == {
        "compatibilityLevel": "BACKWARD"
    }
    status, body, _ = _request(
        settings, "POST", f"/subjects/{subject}/versions", {"schema": V1, "schemaType": "PROTOBUF"}
    )
    assert (status, body["error_code"]) == (422, 42201)


def test_catalog_decodes_v1_and_v2_messages_to_the_same_lead_event(settings: Settings) -> None:
    catalog = SchemaCatalog.from_settings(settings)
    topic = f"catalog-{secrets.token_hex(4)}"
    v1 = AvroTopic(catalog, topic, LEAD_EVENT_SCHEMA)
    v2 = AvroTopic(catalog, topic, LEAD_EVENT_SCHEMA_V2)
    old = event_to_record(created())
    new = {**copy.deepcopy(old), "company_size": old["employees"], "campaign": "spring"}
    new.pop("employees")
    # A fresh catalog knows no ids yet: it resolves both through the registry. Versions
    # in schemas/avro decode as written (no resolution, twice as fast) and the codec maps
    # each to the domain: v1's employees is v2's company_size.
    reader = SchemaCatalog.from_settings(settings)
    from_v1, from_v2 = reader.decode(v1.encode(old)), reader.decode(v2.encode(new))
    assert from_v1["employees"] == from_v2["company_size"] == old["employees"]
    assert record_to_event(from_v1) == record_to_event(from_v2)
    booked = event_to_record(activity())
    booked["activity"]["kind"] = "meeting_booked"
    booked = {**booked, "company_size": None}
    assert reader.decode(v2.encode(booked))["activity"]["kind"] == "meeting_booked"
    # A version this code has never seen is resolved into the newest local one.
    foreign = json.loads(V2)
    foreign["fields"].append({"name": "utm_source", "type": ["null", "string"], "default": None})
    foreign_id = catalog.register(f"{topic}-value", json.dumps(foreign))
    body = encode(foreign_id, catalog.parsed(foreign_id), {**new, "utm_source": "ads"})
    resolved = reader.decode(body)
    assert "utm_source" not in resolved and resolved["attributes"] == {}  # read as v3
    assert record_to_event(resolved) == record_to_event(reader.decode(v2.encode(new)))


def test_catalog_errors(settings: Settings) -> None:
    catalog = SchemaCatalog.from_settings(settings)
    topic = f"catalog-{secrets.token_hex(4)}"
    v1 = AvroTopic(catalog, topic, LEAD_EVENT_SCHEMA)
    record = event_to_record(created())
    with pytest.raises(UnknownSchemaError):
        catalog.decode(encode(2_000_000_000, v1.parsed, record))
    with pytest.raises(SerializationError):
        catalog.decode(v1.encode(record)[:9])
    with pytest.raises(SerializationError):  # the registry's 409, not a connection problem
        catalog.register(f"{topic}-value", _breaking())
    # A registry that does not answer is the registry's fault, not the message's.
    away = SchemaCatalog("http://127.0.0.1:9")
    with pytest.raises(RegistryUnavailableError):
        away.decode(v1.encode(record))
