"""Avro schema compatibility, by the Avro specification's schema-resolution rules.

``can_read(reader, writer)`` lists why data written with ``writer`` could not be read
with ``reader`` (empty: it can). Compatibility levels build on it the way the Confluent
Schema Registry defines them: BACKWARD = the new schema reads the previous one's data,
FORWARD = the previous schema reads the new one's, FULL = both; ``*_TRANSITIVE`` checks
every earlier version instead of the latest only.

Pure: no I/O, standard library only, so the registry, the tests and the `make test`
check share it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LEVELS = (
    "NONE",
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
)
PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
# Writer type -> reader types it may be promoted to (Avro spec, "Schema Resolution").
PROMOTIONS: Mapping[str, frozenset[str]] = {
    "int": frozenset({"long", "float", "double"}),
    "long": frozenset({"float", "double"}),
    "float": frozenset({"double"}),
    "string": frozenset({"bytes"}),
    "bytes": frozenset({"string"}),
}
_NAMED = frozenset({"record", "error", "enum", "fixed"})
_VERSIONED = re.compile(r"^(?P<name>.+)\.v(?P<version>\d+)\.avsc$")


class InvalidSchemaError(ValueError):
    """Text that is not a valid Avro schema."""


@dataclass
class _Schema:
    """A schema with its named types resolved, so references can be followed."""

    root: Any
    names: dict[str, Any] = field(default_factory=dict)


def parse(schema: str | Mapping[str, Any] | list[Any]) -> _Schema:
    """Parse JSON schema text (or already-loaded JSON) and index its named types."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise InvalidSchemaError(f"not JSON: {exc}") from exc
    else:
        schema = json.loads(json.dumps(schema))  # indexing annotates nodes: work on a copy
    parsed = _Schema(schema)
    _index(schema, None, parsed.names)
    return parsed


def _fullname(name: str, namespace: str | None) -> str:
    if "." in name or not namespace:
        return name
    return f"{namespace}.{name}"


def _index(node: Any, namespace: str | None, names: dict[str, Any]) -> None:
    if isinstance(node, str):
        if node not in PRIMITIVES and _fullname(node, namespace) not in names and node not in names:
            raise InvalidSchemaError(f"unknown type {node!r}")
        return
    if isinstance(node, list):
        if not node:
            raise InvalidSchemaError("empty union")
        for branch in node:
            _index(branch, namespace, names)
        return
    if not isinstance(node, dict) or "type" not in node:
        raise InvalidSchemaError(f"not a schema: {node!r}")
    kind = node["type"]
    if kind in _NAMED:
        if not isinstance(node.get("name"), str):
            raise InvalidSchemaError(f"{kind} without a name")
        full = _fullname(node["name"], node.get("namespace", namespace))
        if full in names:
            raise InvalidSchemaError(f"{full} is defined twice")
        names[full] = node
        namespace = full.rpartition(".")[0] or None
        node["__fullname__"] = full
        node["__namespace__"] = namespace
        if kind in ("record", "error"):
            fields = node.get("fields")
            if not isinstance(fields, list):
                raise InvalidSchemaError(f"record {full} has no fields list")
            for f in fields:
                if not isinstance(f, dict) or not isinstance(f.get("name"), str) or "type" not in f:
                    raise InvalidSchemaError(f"bad field in {full}: {f!r}")
                _index(f["type"], namespace, names)
        elif kind == "enum":
            symbols = node.get("symbols")
            if not isinstance(symbols, list) or len(set(symbols)) != len(symbols):
                raise InvalidSchemaError(f"enum {full} needs distinct symbols")
            if "default" in node and node["default"] not in symbols:
                raise InvalidSchemaError(f"enum {full} default is not a symbol")
        elif not isinstance(node.get("size"), int):
            raise InvalidSchemaError(f"fixed {full} needs an int size")
    elif kind == "array":
        _index(node.get("items"), namespace, names)
    elif kind == "map":
        _index(node.get("values"), namespace, names)
    elif isinstance(kind, str | list | dict) and kind not in PRIMITIVES:
        # {"type": "SomeName"} or {"type": {...}}: a wrapped reference or schema.
        _index(kind, namespace, names)


class _Resolver:
    def __init__(self, reader: _Schema, writer: _Schema) -> None:
        self.reader = reader
        self.writer = writer
        self._seen: set[tuple[str, str]] = set()

    def _deref(self, node: Any, schema: _Schema, namespace: str | None) -> Any:
        while True:
            if isinstance(node, str) and node not in PRIMITIVES:
                node = schema.names.get(_fullname(node, namespace)) or schema.names[node]
            elif isinstance(node, dict) and node.get("type") not in _NAMED | {"array", "map"}:
                inner = node["type"]
                if isinstance(inner, str) and inner in PRIMITIVES:
                    return inner  # {"type": "long", "logicalType": ...}: the primitive
                node = inner
            else:
                return node

    def check(self, r: Any, w: Any, path: str, rns: str | None, wns: str | None) -> list[str]:
        r = self._deref(r, self.reader, rns)
        w = self._deref(w, self.writer, wns)
        if isinstance(w, list):
            # Every branch the writer may have used must be readable.
            errors: list[str] = []
            for branch in w:
                errors += self.check(r, branch, path, rns, wns)
            return errors
        if isinstance(r, list):
            for branch in r:
                if not self.check(branch, w, path, rns, wns):
                    return []
            return [f"{path}: no branch of the reader's union reads the writer's {_kind(w)}"]
        rk, wk = _kind(r), _kind(w)
        if rk != wk:
            if wk in PROMOTIONS and rk in PROMOTIONS[wk]:
                return []
            return [f"{path}: reader type {rk} cannot read writer type {wk}"]
        if isinstance(r, str):
            return []
        if rk in ("record", "error"):
            return self._record(r, w, path)
        if rk == "enum":
            return self._enum(r, w, path)
        if rk == "fixed":
            errors = _names_match(r, w, path)
            if r.get("size") != w.get("size"):
                errors.append(f"{path}: fixed size {w.get('size')} read as {r.get('size')}")
            return errors
        if rk == "array":
            return self.check(r["items"], w["items"], f"{path}[]", rns, wns)
        if rk == "map":
            return self.check(r["values"], w["values"], f"{path}{{}}", rns, wns)
        return []

    def _record(self, r: dict[str, Any], w: dict[str, Any], path: str) -> list[str]:
        errors = _names_match(r, w, path)
        key = (r["__fullname__"], w["__fullname__"])
        if key in self._seen:
            return errors  # recursive type: already being checked higher up
        self._seen.add(key)
        written = {f["name"]: f for f in w["fields"]}
        for rf in r["fields"]:
            fpath = f"{path}.{rf['name']}"
            candidates = [rf["name"], *rf.get("aliases", [])]
            wf = next((written[n] for n in candidates if n in written), None)
            if wf is None:
                if "default" not in rf:
                    errors.append(f"{fpath}: new field without a default")
                continue
            errors += self.check(
                rf["type"], wf["type"], fpath, r["__namespace__"], w["__namespace__"]
            )
        return errors

    def _enum(self, r: dict[str, Any], w: dict[str, Any], path: str) -> list[str]:
        errors = _names_match(r, w, path)
        if "default" in r:
            return errors  # unknown symbols resolve to the reader's default
        missing = [s for s in w["symbols"] if s not in r["symbols"]]
        if missing:
            errors.append(f"{path}: symbols {missing} unknown to the reader, which has no default")
        return errors


def _kind(node: Any) -> str:
    if isinstance(node, str):
        return node
    if isinstance(node, list):
        return "union"
    kind = node["type"]
    return "record" if kind == "error" else str(kind)


def _names_match(r: dict[str, Any], w: dict[str, Any], path: str) -> list[str]:
    rfull, wfull = r["__fullname__"], w["__fullname__"]
    ns = r["__namespace__"]
    aliases = {_fullname(a, ns) for a in r.get("aliases", [])}
    short = {n.rpartition(".")[2] for n in (rfull, *aliases)}
    # Like Confluent (and Java's SchemaCompatibility), unqualified names also match.
    if wfull == rfull or wfull in aliases or wfull.rpartition(".")[2] in short:
        return []
    return [f"{path}: writer's {wfull} is not the reader's {rfull} nor one of its aliases"]


def can_read(reader: str | _Schema | Any, writer: str | _Schema | Any) -> list[str]:
    """Why data written with ``writer`` cannot be read with ``reader``; empty if it can."""
    r = reader if isinstance(reader, _Schema) else parse(reader)
    w = writer if isinstance(writer, _Schema) else parse(writer)
    return _Resolver(r, w).check(r.root, w.root, _root_path(r.root), None, None)


def _root_path(node: Any) -> str:
    return node.get("name", "$") if isinstance(node, dict) else "$"


def incompatibilities(level: str, new: str | Any, previous: Sequence[str | Any]) -> list[str]:
    """Why ``new`` may not follow ``previous`` (oldest first) under ``level``; empty if it may."""
    level = level.upper()
    if level not in LEVELS:
        raise ValueError(f"unknown compatibility level {level!r}")
    if level == "NONE" or not previous:
        return []
    against = previous if level.endswith("_TRANSITIVE") else previous[-1:]
    candidate = parse(new) if not isinstance(new, _Schema) else new
    errors: list[str] = []
    for old in against:
        old_parsed = parse(old) if not isinstance(old, _Schema) else old
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
    directory = Path(args[0]) if args else Path(__file__).resolve().parent.parent / "schemas/avro"
    errors = check_directory(directory)
    for e in errors:
        print(e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
