"""Avro schema compatibility, checked by the Apache `avro` package's compatibility module.

``can_read(reader, writer)`` lists why data written with ``writer`` could not be read
with ``reader`` (empty: it can). The verdict is ``avro.compatibility``'s
``ReaderWriterCompatibilityChecker`` (the Python port of Java Avro's ``SchemaCompatibility``,
which the Confluent Schema Registry and Karapace use); this module only names where each
problem is, as ``Record.field`` paths. Compatibility levels build on it the way the
Confluent Schema Registry defines them: BACKWARD = the new schema reads the previous one's
data, FORWARD = the previous schema reads the new one's, FULL = both; ``*_TRANSITIVE``
checks every earlier version instead of the latest only.

Pure: no I/O besides reading schema files, so the registry, the tests and the `make test`
check share it.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import avro.errors
import avro.schema
from avro.compatibility import (
    ReaderWriterCompatibilityChecker,
    SchemaCompatibilityType,
    SchemaIncompatibilityType,
    lookup_writer_field,
)

from adapters.settings import bundled

LEVELS = (
    "NONE",
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
)
_VERSIONED = re.compile(r"^(?P<name>.+)\.v(?P<version>\d+)\.avsc$")
_MISSING_DEFAULT = SchemaIncompatibilityType.reader_field_missing_default_value
# What each kind of problem the checker reports means, in the words of our messages.
_MEANING = {
    _MISSING_DEFAULT: "new field without a default",
    SchemaIncompatibilityType.name_mismatch: "not the writer's name nor aliased to it",
    SchemaIncompatibilityType.missing_enum_symbols: (
        "symbols unknown to the reader, which has no default"
    ),
    SchemaIncompatibilityType.fixed_size_mismatch: "fixed sizes differ",
    SchemaIncompatibilityType.type_mismatch: "the reader's type cannot read the writer's",
    SchemaIncompatibilityType.missing_union_branch: (
        "no branch of the reader's union reads the writer's type"
    ),
}

Schema = avro.schema.Schema


class InvalidSchemaError(ValueError):
    """Text that is not a valid Avro schema."""


def parse(schema: str | Mapping[str, Any] | list[Any] | Schema) -> Schema:
    """Parse JSON schema text (or already-loaded JSON) into an ``avro`` schema."""
    if isinstance(schema, Schema):
        return schema
    text = schema if isinstance(schema, str) else json.dumps(schema)
    try:
        parsed = avro.schema.parse(text)
    except (avro.errors.AvroException, TypeError, ValueError, KeyError, AttributeError) as exc:
        raise InvalidSchemaError(str(exc)) from exc
    _reject_empty_unions(parsed, set())
    return parsed


def _reject_empty_unions(node: Schema, seen: set[int]) -> None:
    # `avro` accepts `[]`, a union no value belongs to: nothing could be written with it.
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, avro.schema.UnionSchema):
        if not node.schemas:
            raise InvalidSchemaError("empty union")
        children = list(node.schemas)
    elif isinstance(node, avro.schema.RecordSchema):
        children = [f.type for f in node.fields]
    elif isinstance(node, avro.schema.ArraySchema):
        children = [node.items]
    elif isinstance(node, avro.schema.MapSchema):
        children = [node.values]
    else:
        children = []
    for child in children:
        _reject_empty_unions(child, seen)


def can_read(reader: str | Schema | Any, writer: str | Schema | Any) -> list[str]:
    """Why data written with ``writer`` cannot be read with ``reader``; empty if it can."""
    r, w = parse(reader), parse(writer)
    result = ReaderWriterCompatibilityChecker().get_compatibility(r, w)
    if result.compatibility is not SchemaCompatibilityType.incompatible:
        return []
    # The checker gathers its findings into two sets, messages and locations (JSON pointers
    # into the reader, like /fields/3/type). Each location is followed through both schemas
    # to the message the checker writes for it there; that pairs them.
    unexplained = set(result.messages)
    lines = []
    for location in sorted(result.locations, key=_pointer_order):
        found = _explain(r, w, location, unexplained)
        if found is not None:
            path, kind, message = found
            unexplained.discard(message)
            detail = "" if kind is _MISSING_DEFAULT else f" ({message})"
            lines.append(f"{path}: {_MEANING[kind]}{detail}")
    # Inside a union the checker restarts its locations: what it found there is reported
    # without a path.
    lines += [f"{_name(r)}, in a union: {_unplaced(m)}" for m in sorted(unexplained)]
    return lines


def _unplaced(message: str) -> str:
    if message.startswith(("reader ", "expected: ")):
        return message
    if message.startswith("{"):
        return f"{_MEANING[SchemaIncompatibilityType.missing_enum_symbols]} ({message})"
    return f"{message}: {_MEANING[_MISSING_DEFAULT]}"  # the checker names the field only


def _pointer_order(location: str) -> list[Any]:
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in location.split("/")]


def _name(schema: Schema) -> str:
    return str(getattr(schema, "name", None) or "$")


def _explain(
    reader: Schema, writer: Schema, location: str, messages: set[str]
) -> tuple[str, SchemaIncompatibilityType, str] | None:
    """The ``Record.field`` path of a checker location, what kind of problem is there and the
    checker's message for it; None if no message fits the location."""
    r: Any = reader
    w: Any = writer
    path = _name(reader)
    tokens = [t for t in location.split("/") if t]
    expected: dict[SchemaIncompatibilityType, str] = {}
    while tokens:
        token = tokens.pop(0)
        if token == "fields" and tokens and isinstance(r, avro.schema.RecordSchema):
            index = int(tokens.pop(0))
            if index >= len(r.fields):
                return None
            field = r.fields[index]
            path += f".{field.name}"
            if not tokens:  # the location is the reader's field: the writer has none
                expected[_MISSING_DEFAULT] = field.name
                break
            written = (
                lookup_writer_field(writer_schema=w, reader_field=field)
                if isinstance(w, avro.schema.RecordSchema)
                else None
            )
            if written is None or tokens.pop(0) != "type":
                return None
            r, w = field.type, written.type
        elif token == "items" and isinstance(r, avro.schema.ArraySchema) and hasattr(w, "items"):
            r, w, path = r.items, w.items, path + "[]"
        elif token == "values" and isinstance(r, avro.schema.MapSchema) and hasattr(w, "values"):
            r, w, path = r.values, w.values, path + "{}"
        elif token == "name" and not tokens and hasattr(w, "fullname"):
            expected[SchemaIncompatibilityType.name_mismatch] = f"expected: {w.fullname}"
        elif token == "size" and not tokens and hasattr(w, "size") and hasattr(r, "size"):
            expected[SchemaIncompatibilityType.fixed_size_mismatch] = (
                f"expected: {w.size}, found: {r.size}"
            )
        elif token == "symbols" and not tokens and hasattr(w, "symbols"):
            missing = set(w.symbols) - set(r.symbols)
            expected[SchemaIncompatibilityType.missing_enum_symbols] = next(
                (m for m in messages if m.startswith("{") and _symbols(m) == missing), ""
            )
        elif token.isdigit() and not tokens and isinstance(w, avro.schema.UnionSchema):
            branch = w.schemas[int(token)] if int(token) < len(w.schemas) else None
            if branch is None:
                return None
            expected[SchemaIncompatibilityType.missing_union_branch] = (
                f"reader union lacking writer type: {branch.type.upper()}"
            )
        else:
            return None
    if not expected:  # the location is a type the reader cannot read the writer's with
        expected[SchemaIncompatibilityType.type_mismatch] = (
            f"reader type: {r.type} not compatible with writer type: {w.type}"
        )
        expected[SchemaIncompatibilityType.missing_union_branch] = (
            f"reader union lacking writer type {w.type}"
        )
    return next(
        ((path, kind, message) for kind, message in expected.items() if message in messages),
        None,
    )


def _symbols(message: str) -> set[str]:
    try:
        value = ast.literal_eval(message)
    except (ValueError, SyntaxError):
        return set()
    return value if isinstance(value, set) else set()


def incompatibilities(level: str, new: str | Any, previous: Sequence[str | Any]) -> list[str]:
    """Why ``new`` may not follow ``previous`` (oldest first) under ``level``; empty if it may."""
    level = level.upper()
    if level not in LEVELS:
        raise ValueError(f"unknown compatibility level {level!r}")
    if level == "NONE" or not previous:
        return []
    against = previous if level.endswith("_TRANSITIVE") else previous[-1:]
    candidate = parse(new)
    errors: list[str] = []
    for old in against:
        old_parsed = parse(old)
        if level.startswith(("BACKWARD", "FULL")):
            errors += [f"BACKWARD: {e}" for e in can_read(candidate, old_parsed)]
        if level.startswith(("FORWARD", "FULL")):
            errors += [f"FORWARD: {e}" for e in can_read(old_parsed, candidate)]
    return errors


def versioned_files(directory: Path) -> dict[str, list[Path]]:
    """``<name>.v<N>.avsc`` files per name, in version order."""
    found: dict[str, list[tuple[int, Path]]] = {}
    for path in directory.glob("*.avsc"):
        m = _VERSIONED.match(path.name)
        if m:
            found.setdefault(m["name"], []).append((int(m["version"]), path))
    return {name: [p for _, p in sorted(items)] for name, items in sorted(found.items())}


def check_directory(directory: Path, level: str = "BACKWARD") -> list[str]:
    """Each schema file's incompatibilities with its predecessors; empty if all evolve safely."""
    errors: list[str] = []
    for paths in versioned_files(directory).values():
        texts = [p.read_text() for p in paths]
        for i in range(1, len(paths)):
            errors += [
                f"{paths[i].name}: {e}" for e in incompatibilities(level, texts[i], texts[:i])
            ]
    return errors


def main(argv: Iterable[str] | None = None) -> int:
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    directory = Path(args[0]) if args else bundled("schemas", "avro")
    errors = check_directory(directory)
    for e in errors:
        print(e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
