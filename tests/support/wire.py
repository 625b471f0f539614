"""The Confluent wire format without a schema registry: one schema id, a local catalog,
and a fixed set of known orgs, for decoding tests."""

from __future__ import annotations

import io
import json
import struct
from datetime import UTC, datetime
from typing import Any

import fastavro

from streams.wire import LEAD_EVENT_SCHEMA, SerializationError, UnknownSchemaError

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SCHEMA_ID = 7
PARSED = fastavro.parse_schema(json.loads(LEAD_EVENT_SCHEMA.read_text()))
_HEADER = struct.Struct(">bI")


class LocalCatalog:
    """The catalog port without a registry: one schema id, the Confluent wire format."""

    def decode(self, value: bytes | None) -> dict[str, Any]:
        if value is None or len(value) < _HEADER.size:
            raise SerializationError("message shorter than the 5-byte wire-format header")
        magic, schema_id = _HEADER.unpack_from(value)
        if magic != 0:
            raise SerializationError(f"unknown magic byte {magic}")
        if schema_id != SCHEMA_ID:
            raise UnknownSchemaError(f"unknown schema id {schema_id}")
        try:
            record = fastavro.schemaless_reader(io.BytesIO(value[5:]), PARSED, PARSED)
        except Exception as exc:
            raise SerializationError(f"undecodable: {type(exc).__name__}: {exc}") from exc
        if not isinstance(record, dict):
            raise SerializationError("not a record")
        return record


def encode(record: dict[str, Any], schema_id: int = SCHEMA_ID) -> bytes:
    buf = io.BytesIO()
    buf.write(_HEADER.pack(0, schema_id))
    fastavro.schemaless_writer(buf, PARSED, record)
    return buf.getvalue()


class Orgs:
    def __init__(self, *known: str) -> None:
        self.orgs = set(known)

    def known(self, org_id: str) -> bool:
        return org_id in self.orgs
