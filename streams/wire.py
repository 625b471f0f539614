"""Confluent wire format (magic byte 0, 4-byte big-endian schema id, Avro body).

Schema ids are resolved through a schema registry speaking the Confluent REST API
(``LEADSCORE_SCHEMA_REGISTRY_URL``: the project's own registry, or a Confluent or
Apicurio one), so producers using Confluent's ``AvroSerializer`` feed the engine
unchanged. Each message is read with the schema it was written with (its id), resolved
against the newest version of that record the engine knows (``schemas/avro/*.vN.avsc``),
so every version of a record decodes to the same shape.
"""

from __future__ import annotations

import io
import json
import re
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fastavro
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, SchemaRegistryError
from fastavro.schema import to_parsing_canonical_form

from adapters.settings import bundled

if TYPE_CHECKING:
    from adapters.settings import Settings

SCHEMA_DIR = bundled("schemas", "avro")  # the checkout's, or the installed package's
LEAD_EVENT_SCHEMA = SCHEMA_DIR / "lead_event.v1.avsc"
LEAD_EVENT_SCHEMA_V2 = SCHEMA_DIR / "lead_event.v2.avsc"
LEAD_EVENT_SCHEMA_V3 = SCHEMA_DIR / "lead_event.v3.avsc"
# What the engine's own producers write (`leadscore produce`, `leadscore import`): the
# newest version, so every field reaches Kafka (tests/unit/test_schema_compat.py checks it).
LEAD_EVENT_SCHEMA_NEWEST = LEAD_EVENT_SCHEMA_V3
SCORE_EVENT_SCHEMA = SCHEMA_DIR / "score_event.v2.avsc"
# The record every lead-event is: a schema id of another record is refused however alike.
LEAD_EVENT_RECORD = "io.leadscore.events.LeadEvent"
_HEADER = struct.Struct(">bI")
MAGIC = 0
_VERSIONED = re.compile(r"^(?P<name>.+)\.v(?P<version>\d+)\.avsc$")


class SerializationError(ValueError):
    """A message that is not a valid Avro body in the Confluent wire format."""


class UnknownSchemaError(SerializationError):
    """The message names a schema id the registry does not know."""


class ForeignSchemaError(UnknownSchemaError):
    """The schema id is registered, but not under the topic's subject as its record."""


class RegistryUnavailableError(ConnectionError):
    """The schema registry did not answer: not the message's fault, so no SerializationError."""


class RegistryAuthError(RegistryUnavailableError):
    """The registry refused our credentials (401/403): a configuration fault, not the message's."""


def _registry_fault(url: str, exc: SchemaRegistryError) -> RegistryUnavailableError:
    if exc.http_status_code in (401, 403):
        return RegistryAuthError(
            f"schema registry {url} refused our credentials ({exc.http_status_code}): "
            "check LEADSCORE_SCHEMA_REGISTRY_USER and LEADSCORE_SCHEMA_REGISTRY_PASSWORD"
        )
    return RegistryUnavailableError(f"schema registry {url}: {exc}")


def canonical(schema: Any) -> str:
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


def load_schema_text(path: Path) -> str:
    # Canonical JSON so the same file always registers as the same schema.
    return canonical(json.loads(path.read_text()))


def newest_local_schemas(directory: Path = SCHEMA_DIR) -> dict[str, str]:
    """The newest ``<name>.v<N>.avsc`` of each record, keyed by the record's full name."""
    newest: dict[str, tuple[int, str]] = {}
    for path in directory.glob("*.avsc"):
        m = _VERSIONED.match(path.name)
        if not m:
            continue
        schema = json.loads(path.read_text())
        name = _fullname(schema)
        if name is not None and int(m["version"]) > newest.get(name, (0, ""))[0]:
            newest[name] = (int(m["version"]), canonical(schema))
    return {name: text for name, (_, text) in newest.items()}


def _fullname(schema: Any) -> str | None:
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return None
    name = str(schema["name"])
    namespace = schema.get("namespace")
    return name if "." in name or not namespace else f"{namespace}.{name}"


def encode(schema_id: int, parsed_schema: Any, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    buf.write(_HEADER.pack(MAGIC, schema_id))
    try:
        fastavro.schemaless_writer(buf, parsed_schema, record)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise SerializationError(f"record does not match the schema: {exc}") from exc
    return buf.getvalue()


def split_header(value: bytes | None) -> tuple[int, memoryview]:
    if value is None or len(value) < _HEADER.size:
        raise SerializationError("message shorter than the 5-byte wire-format header")
    magic, schema_id = _HEADER.unpack_from(value)
    if magic != MAGIC:
        raise SerializationError(f"unknown magic byte {magic}")
    return schema_id, memoryview(value)[_HEADER.size :]


class SchemaCatalog:
    """A schema-registry client: register schemas, resolve ids, decode messages.

    Ids are immutable, so each id's parsed writer schema and its reader are cached
    forever: decoding costs a registry round trip only the first time an id is seen.
    """

    def __init__(
        self,
        registry_url: str,
        reader_schemas: dict[str, str] | None = None,
        *,
        user_info: str = "",
    ) -> None:
        self.url = registry_url
        self._user_info = user_info  # "user:password" for the registry's basic auth
        readers = newest_local_schemas() if reader_schemas is None else reader_schemas
        self._readers = {name: fastavro.parse_schema(json.loads(t)) for name, t in readers.items()}
        # Every version in schemas/avro: the codec maps each one's records itself
        # (streams/codec.py, tested per version), so their messages skip resolution.
        self._local = {
            to_parsing_canonical_form(fastavro.parse_schema(json.loads(p.read_text())))
            for p in SCHEMA_DIR.glob("*.avsc")
        }
        self._by_id: dict[int, Any] = {}
        self._decoders: dict[int, tuple[Any, Any]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> SchemaCatalog:
        """The catalog on the configured registry, with its credentials."""
        return cls(settings.schema_registry_url, user_info=settings.schema_registry_user_info)

    def _client(self) -> SchemaRegistryClient:
        # One per call, closed after it: the registry is asked rarely (registrations, and
        # ids seen for the first time), and no idle connection outlives the catalog.
        conf = {"url": self.url}
        if self._user_info:
            conf["basic.auth.user.info"] = self._user_info
        return SchemaRegistryClient(conf)

    def register(self, subject: str, schema_text: str) -> int:
        """Register under ``subject``; the same schema again returns the same id."""
        try:
            with self._client() as client:
                schema_id = int(client.register_schema(subject, Schema(schema_text, "AVRO")))
        except SchemaRegistryError as exc:
            if exc.http_status_code >= 500 or exc.http_status_code in (401, 403):
                raise _registry_fault(self.url, exc) from exc
            raise SerializationError(f"registry refused the schema for {subject}: {exc}") from exc
        except Exception as exc:  # the HTTP client's connection errors
            raise RegistryUnavailableError(f"schema registry {self.url}: {exc}") from exc
        self._by_id.setdefault(schema_id, fastavro.parse_schema(json.loads(schema_text)))
        return schema_id

    def schema_text(self, schema_id: int) -> str:
        try:
            with self._client() as client:
                schema = client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise UnknownSchemaError(f"unknown schema id {schema_id}") from exc
            raise _registry_fault(self.url, exc) from exc
        except Exception as exc:
            raise RegistryUnavailableError(f"schema registry {self.url}: {exc}") from exc
        if schema.schema_type not in (None, "AVRO"):
            raise UnknownSchemaError(f"schema id {schema_id} is {schema.schema_type}, not Avro")
        return str(schema.schema_str)

    def subjects_of(self, schema_id: int) -> set[str]:
        """The subjects ``schema_id`` is registered under (deleted versions left out)."""
        try:
            with self._client() as client:
                versions = client.get_schema_versions(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise UnknownSchemaError(f"unknown schema id {schema_id}") from exc
            raise _registry_fault(self.url, exc) from exc
        except Exception as exc:
            raise RegistryUnavailableError(f"schema registry {self.url}: {exc}") from exc
        return {str(v.subject) for v in versions}

    def parsed(self, schema_id: int) -> Any:
        """The writer schema of ``schema_id``, parsed."""
        try:
            return self._by_id[schema_id]
        except KeyError:
            pass
        text = self.schema_text(schema_id)
        try:
            parsed = fastavro.parse_schema(json.loads(text))
        except Exception as exc:  # fastavro raises several types for bad schemas
            raise UnknownSchemaError(f"schema id {schema_id} is not a valid Avro schema") from exc
        self._by_id[schema_id] = parsed
        return parsed

    def _decoder(self, schema_id: int) -> tuple[Any, Any]:
        try:
            return self._decoders[schema_id]
        except KeyError:
            pass
        with self._lock:
            writer = self.parsed(schema_id)
            name = _fullname(writer)
            reader = self._readers.get(name) if name is not None else None
            # The writer is the reader, or a version this code reads as written: no
            # resolution, fastavro's fast path (resolving costs about twice the decode).
            if reader is not None and to_parsing_canonical_form(writer) in {
                to_parsing_canonical_form(reader),
                *self._local,
            }:
                reader = None
            self._decoders[schema_id] = (writer, reader)
        return writer, reader

    def decode(self, value: bytes | None) -> dict[str, Any]:
        schema_id, body = split_header(value)
        writer, reader = self._decoder(schema_id)
        try:
            record = fastavro.schemaless_reader(io.BytesIO(body), writer, reader)
        except Exception as exc:  # fastavro raises many types on corrupt input
            raise SerializationError(f"undecodable Avro body: {type(exc).__name__}: {exc}") from exc
        if not isinstance(record, dict):
            raise SerializationError("Avro body is not a record")
        return record


class SubjectBoundDecoder:
    """Decodes only messages whose schema id is registered under ``subject`` (or a subject
    ``<ingress_prefix><anything>-value``: tenants' per-org topics) as ``record``.

    Any producer with registry credentials can register a schema under any subject; a
    message written with one registered only for another topic (``billing-events-value``)
    or another record is not a lead-event, however alike its fields: UnknownSchemaError,
    so a dead letter. Each id is asked about once: an accepted id is remembered for the
    process's life (the hot path then costs a set lookup), a refused or unknown one for
    ``refusal_ttl_s``, so a flood of them costs one registry call per id per interval and
    an id registered under the subject later is accepted after that.
    """

    MAX_REFUSED = 10_000  # refused ids remembered at most (random ids must not grow memory)

    def __init__(
        self,
        catalog: SchemaCatalog,
        subject: str,
        record: str,
        *,
        ingress_prefix: str = "",
        refusal_ttl_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.catalog = catalog
        self.subject = subject
        self.record = record
        self.ingress_prefix = ingress_prefix
        self.refusal_ttl_s = refusal_ttl_s
        self._clock = clock
        self._accepted: set[int] = set()
        self._refused: dict[int, tuple[float, UnknownSchemaError]] = {}
        self._lock = threading.Lock()

    def decode(self, value: bytes | None) -> dict[str, Any]:
        schema_id, _ = split_header(value)
        if schema_id not in self._accepted:
            self._admit(schema_id)
        return self.catalog.decode(value)

    def _admit(self, schema_id: int) -> None:
        with self._lock:
            refused = self._refused.get(schema_id)
            if refused is not None and refused[0] > self._clock():
                raise type(refused[1])(str(refused[1]))
            error: UnknownSchemaError
            try:
                why = self._refusal(schema_id)
            except UnknownSchemaError as exc:
                error = exc
            else:
                if why is None:
                    self._refused.pop(schema_id, None)
                    self._accepted.add(schema_id)
                    return
                error = ForeignSchemaError(why)
            if len(self._refused) >= self.MAX_REFUSED:
                del self._refused[next(iter(self._refused))]
            self._refused[schema_id] = (self._clock() + self.refusal_ttl_s, error)
        raise type(error)(str(error))

    def _ours(self, subject: str) -> bool:
        if subject == self.subject:
            return True
        prefix = self.ingress_prefix
        return bool(prefix) and subject.startswith(prefix) and subject.endswith("-value")

    def _refusal(self, schema_id: int) -> str | None:
        """Why ``schema_id`` is not ours, or None (registry faults propagate)."""
        subjects = self.catalog.subjects_of(schema_id)
        if not any(self._ours(s) for s in subjects):
            where = ", ".join(sorted(subjects)[:3]) if subjects else "no live subject"
            return f"schema id {schema_id} is registered under {where}, not {self.subject}"
        name = _fullname(self.catalog.parsed(schema_id))
        if name != self.record:
            return f"schema id {schema_id} is the record {name}, not {self.record}"
        return None


class AvroTopic:
    """Encoder for one topic's value schema, registered under ``<topic>-value``."""

    def __init__(self, catalog: SchemaCatalog, topic: str, schema_path: Path) -> None:
        text = load_schema_text(schema_path)
        self.subject = f"{topic}-value"
        self.schema_id = catalog.register(self.subject, text)
        self.parsed = catalog.parsed(self.schema_id)

    def encode(self, record: dict[str, Any]) -> bytes:
        return encode(self.schema_id, self.parsed, record)
