"""Confluent wire format (magic byte 0, 4-byte big-endian schema id, Avro body).

Schema ids come from the ``avro_schemas`` table the project keeps in PostgreSQL
until a schema registry is wired in; producers using Confluent serializers with
the same ids can feed the engine unchanged.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
from pathlib import Path
from typing import Any

import fastavro
import psycopg

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas" / "avro"
LEAD_EVENT_SCHEMA = SCHEMA_DIR / "lead_event.v1.avsc"
SCORE_EVENT_SCHEMA = SCHEMA_DIR / "score_event.v1.avsc"
_HEADER = struct.Struct(">bI")
MAGIC = 0


class SerializationError(ValueError):
    """A message that is not a valid Avro body in the Confluent wire format."""


class UnknownSchemaError(SerializationError):
    """The message names a schema id the catalog does not know."""


def load_schema_text(path: Path) -> str:
    # Canonical JSON so the same schema always registers under the same fingerprint.
    return json.dumps(json.loads(path.read_text()), sort_keys=True, separators=(",", ":"))


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
    """Schema ids kept in PostgreSQL: register once, resolve by id, cache forever."""

    DDL = """
    CREATE TABLE IF NOT EXISTS avro_schemas (
        id serial PRIMARY KEY,
        subject text NOT NULL,
        version int NOT NULL,
        fingerprint text NOT NULL,
        schema text NOT NULL,
        registered_at timestamptz NOT NULL DEFAULT now(),
        UNIQUE (subject, fingerprint),
        UNIQUE (subject, version)
    )
    """

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._by_id: dict[int, Any] = {}

    def register(self, subject: str, schema_text: str) -> int:
        fingerprint = hashlib.sha256(schema_text.encode()).hexdigest()
        with psycopg.connect(self._dsn, autocommit=True) as conn:
            conn.execute(self.DDL)
            # Serialise registrations so concurrent workers agree on versions.
            with conn.transaction():
                conn.execute("LOCK TABLE avro_schemas IN SHARE ROW EXCLUSIVE MODE")
                row = conn.execute(
                    "SELECT id FROM avro_schemas WHERE subject = %s AND fingerprint = %s",
                    (subject, fingerprint),
                ).fetchone()
                if row is None:
                    row = conn.execute(
                        "INSERT INTO avro_schemas (subject, version, fingerprint, schema) "
                        "SELECT %s, coalesce(max(version), 0) + 1, %s, %s FROM avro_schemas "
                        "WHERE subject = %s RETURNING id",
                        (subject, fingerprint, schema_text, subject),
                    ).fetchone()
        assert row is not None
        schema_id = int(row[0])
        self._by_id[schema_id] = fastavro.parse_schema(json.loads(schema_text))
        return schema_id

    def parsed(self, schema_id: int) -> Any:
        try:
            return self._by_id[schema_id]
        except KeyError:
            pass
        with psycopg.connect(self._dsn, autocommit=True) as conn:
            conn.execute(self.DDL)
            row = conn.execute(
                "SELECT schema FROM avro_schemas WHERE id = %s", (schema_id,)
            ).fetchone()
        if row is None:
            raise UnknownSchemaError(f"unknown schema id {schema_id}")
        parsed = fastavro.parse_schema(json.loads(row[0]))
        self._by_id[schema_id] = parsed
        return parsed

    def decode(self, value: bytes | None) -> dict[str, Any]:
        schema_id, body = split_header(value)
        schema = self.parsed(schema_id)
        try:
            record = fastavro.schemaless_reader(io.BytesIO(body), schema, schema)
        except Exception as exc:  # fastavro raises many types on corrupt input
            raise SerializationError(f"undecodable Avro body: {type(exc).__name__}: {exc}") from exc
        if not isinstance(record, dict):
            raise SerializationError("Avro body is not a record")
        return record


class AvroTopic:
    """Encoder for one topic's value schema, registered under ``<topic>-value``."""

    def __init__(self, catalog: SchemaCatalog, topic: str, schema_path: Path) -> None:
        text = load_schema_text(schema_path)
        self.schema_id = catalog.register(f"{topic}-value", text)
        self.parsed = catalog.parsed(self.schema_id)

    def encode(self, record: dict[str, Any]) -> bytes:
        return encode(self.schema_id, self.parsed, record)
