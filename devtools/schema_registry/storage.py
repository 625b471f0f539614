"""The registry's PostgreSQL storage: schemas by id, subject versions, compatibility config."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import asyncpg

from adapters import schema_compat

DEFAULT_LEVEL = "BACKWARD"
GLOBAL = ""  # the config row without a subject
_LOCK = 0x5C4E3A  # advisory lock serialising DDL and registrations across registries

DDL = """
CREATE TABLE IF NOT EXISTS registry_schemas (
    id serial PRIMARY KEY,
    fingerprint text NOT NULL UNIQUE,
    schema text NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS registry_subject_versions (
    subject text NOT NULL,
    version int NOT NULL,
    schema_id int NOT NULL REFERENCES registry_schemas (id),
    deleted boolean NOT NULL DEFAULT false,
    registered_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, version)
);
CREATE INDEX IF NOT EXISTS registry_subject_versions_schema
    ON registry_subject_versions (schema_id);
CREATE TABLE IF NOT EXISTS registry_config (
    subject text PRIMARY KEY,
    compatibility text NOT NULL
);
"""


class RegistryError(Exception):
    """An error with Confluent's error code; the HTTP status is its first three digits."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        return int(str(self.code)[:3])


def subject_not_found(subject: str) -> RegistryError:
    return RegistryError(40401, f"Subject '{subject}' not found.")


def version_not_found(version: object) -> RegistryError:
    return RegistryError(40402, f"Version {version} not found.")


def schema_not_found() -> RegistryError:
    return RegistryError(40403, "Schema not found")


@dataclass(frozen=True)
class SubjectVersion:
    subject: str
    version: int
    id: int
    schema: str

    def as_json(self) -> dict[str, object]:
        return {
            "subject": self.subject,
            "version": self.version,
            "id": self.id,
            "schema": self.schema,
        }


def canonical(schema_text: str) -> str:
    """Validate an Avro schema and return its canonical JSON (the registry's identity)."""
    try:
        schema_compat.parse(schema_text)
    except schema_compat.InvalidSchemaError as exc:
        raise RegistryError(42201, f"Invalid schema: {exc}") from exc
    try:
        import fastavro

        fastavro.parse_schema(json.loads(schema_text))
    except Exception as exc:  # fastavro raises several types for bad schemas
        raise RegistryError(42201, f"Invalid schema: {exc}") from exc
    return json.dumps(json.loads(schema_text), sort_keys=True, separators=(",", ":"))


def fingerprint(canonical_text: str) -> str:
    return hashlib.sha256(canonical_text.encode()).hexdigest()


class Storage:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def migrate(self) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
            await conn.execute(DDL)

    async def schema_by_id(self, schema_id: int) -> str:
        text = await self.pool.fetchval(
            "SELECT schema FROM registry_schemas WHERE id = $1", schema_id
        )
        if text is None:
            raise schema_not_found()
        return str(text)

    async def versions_of_schema(self, schema_id: int) -> list[tuple[str, int]]:
        await self.schema_by_id(schema_id)
        rows = await self.pool.fetch(
            "SELECT subject, version FROM registry_subject_versions "
            "WHERE schema_id = $1 AND NOT deleted ORDER BY subject, version",
            schema_id,
        )
        return [(r["subject"], r["version"]) for r in rows]

    async def subjects(self, deleted: bool = False) -> list[str]:
        rows = await self.pool.fetch(
            "SELECT DISTINCT subject FROM registry_subject_versions "
            "WHERE $1 OR NOT deleted ORDER BY subject",
            deleted,
        )
        return [r["subject"] for r in rows]

    async def versions(self, subject: str) -> list[int]:
        rows = await self.pool.fetch(
            "SELECT version FROM registry_subject_versions "
            "WHERE subject = $1 AND NOT deleted ORDER BY version",
            subject,
        )
        if not rows:
            raise subject_not_found(subject)
        return [r["version"] for r in rows]

    async def _history(self, conn: asyncpg.Connection, subject: str) -> list[SubjectVersion]:
        rows = await conn.fetch(
            "SELECT v.version, v.schema_id, s.schema FROM registry_subject_versions v "
            "JOIN registry_schemas s ON s.id = v.schema_id "
            "WHERE v.subject = $1 AND NOT v.deleted ORDER BY v.version",
            subject,
        )
        return [SubjectVersion(subject, r["version"], r["schema_id"], r["schema"]) for r in rows]

    async def version(self, subject: str, version: str) -> SubjectVersion:
        async with self.pool.acquire() as conn:
            history = await self._history(conn, subject)
        return _pick(subject, history, version)

    async def lookup(self, subject: str, schema_text: str) -> SubjectVersion:
        fp = fingerprint(canonical(schema_text))
        async with self.pool.acquire() as conn:
            history = await self._history(conn, subject)
            if not history:
                raise subject_not_found(subject)
            ids = await conn.fetch("SELECT id FROM registry_schemas WHERE fingerprint = $1", fp)
        wanted = {r["id"] for r in ids}
        for sv in reversed(history):
            if sv.id in wanted:
                return sv
        raise schema_not_found()

    async def register(self, subject: str, schema_text: str) -> int:
        text = canonical(schema_text)
        fp = fingerprint(text)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
            history = await self._history(conn, subject)
            existing = await conn.fetchval(
                "SELECT id FROM registry_schemas WHERE fingerprint = $1", fp
            )
            if existing is not None and any(sv.id == existing for sv in history):
                return int(existing)
            level = await self._level(conn, subject)
            problems = schema_compat.incompatibilities(level, text, [sv.schema for sv in history])
            if problems:
                raise RegistryError(
                    409,
                    f"Schema being registered is incompatible with an earlier schema for subject "
                    f"'{subject}' ({level}): " + "; ".join(problems),
                )
            if existing is None:
                existing = await conn.fetchval(
                    "INSERT INTO registry_schemas (fingerprint, schema) "
                    "VALUES ($1, $2) RETURNING id",
                    fp,
                    schema_text,
                )
            await conn.execute(
                "INSERT INTO registry_subject_versions (subject, version, schema_id) "
                "SELECT $1, coalesce(max(version), 0) + 1, $2 "
                "FROM registry_subject_versions WHERE subject = $1",
                subject,
                existing,
            )
        return int(existing)

    async def compatibility(self, subject: str, schema_text: str, version: str | None) -> list[str]:
        """Why ``schema_text`` is incompatible with the subject (all versions if None)."""
        text = canonical(schema_text)
        async with self.pool.acquire() as conn:
            history = await self._history(conn, subject)
            level = await self._level(conn, subject)
        if version is None:
            previous = [sv.schema for sv in history]
            level = (
                level if level.endswith("_TRANSITIVE") or level == "NONE" else level + "_TRANSITIVE"
            )
        else:
            if not history:
                raise subject_not_found(subject)
            previous = [_pick(subject, history, version).schema]
        return schema_compat.incompatibilities(level, text, previous)

    async def delete_subject(self, subject: str) -> list[int]:
        versions = await self.versions(subject)
        await self.pool.execute(
            "UPDATE registry_subject_versions SET deleted = true WHERE subject = $1", subject
        )
        return versions

    async def _level(self, conn: asyncpg.Connection, subject: str) -> str:
        level = await conn.fetchval(
            "SELECT compatibility FROM registry_config WHERE subject = $1", subject
        )
        if level is None:
            level = await conn.fetchval(
                "SELECT compatibility FROM registry_config WHERE subject = $1", GLOBAL
            )
        return str(level or DEFAULT_LEVEL)

    async def get_config(self, subject: str | None, default_to_global: bool) -> str:
        if subject is None:
            level = await self.pool.fetchval(
                "SELECT compatibility FROM registry_config WHERE subject = $1", GLOBAL
            )
            return str(level or DEFAULT_LEVEL)
        level = await self.pool.fetchval(
            "SELECT compatibility FROM registry_config WHERE subject = $1", subject
        )
        if level is None:
            if not default_to_global:
                raise RegistryError(
                    40408,
                    f"Subject '{subject}' does not have subject-level compatibility configured",
                )
            return await self.get_config(None, False)
        return str(level)

    async def set_config(self, subject: str | None, level: str) -> str:
        level = str(level).upper()
        if level not in schema_compat.LEVELS:
            raise RegistryError(42203, f"Invalid compatibility level {level!r}")
        await self.pool.execute(
            "INSERT INTO registry_config (subject, compatibility) VALUES ($1, $2) "
            "ON CONFLICT (subject) DO UPDATE SET compatibility = excluded.compatibility",
            GLOBAL if subject is None else subject,
            level,
        )
        return level


def _pick(subject: str, history: list[SubjectVersion], version: str) -> SubjectVersion:
    if not history:
        raise subject_not_found(subject)
    if version in ("latest", "-1"):
        return history[-1]
    try:
        number = int(version)
    except ValueError:
        number = 0
    if number < 1:
        raise RegistryError(
            42202,
            f"The specified version '{version}' is not a valid version id. Allowed values are "
            'between [1, 2^31-1] and the string "latest"',
        )
    for sv in history:
        if sv.version == number:
            return sv
    raise version_not_found(number)
