"""The ClickHouse analytics read model: lead events and score history as fact tables.

One client serves both the projection (writes) and ``projections.analytics`` (reads):
``connect(dsn)`` opens it for ``chdb://[path]`` (embedded chDB, one process per data
directory) or ``http(s)://host:port[/database]`` (a ClickHouse server), on the same code
path. Client calls run in a worker thread (``asyncio.to_thread``): chDB releases the GIL
while it works, so the event loop keeps serving while a batch is inserted or a query runs.

Idempotency, without multi-table transactions: fact rows carry their log position and the
position is recorded *after* the batch's inserts. Rows above the recorded position can
only be left by a write that failed or crashed, so before its first write (and after any
failure) the projection deletes them; entries at or below the recorded position are
skipped. Tables therefore hold each log entry exactly once and plain queries are exact.
"""

from __future__ import annotations

import asyncio
import fcntl
import re
import struct
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import (
    DatabaseError,
    DataError,
    OperationalError,
    ProgrammingError,
)

from domain.events import PII_FIELDS
from projections.log import LogEntry

DEFAULT_DATABASE = "leadscore"
POSITIONS_TABLE = "projection_positions"
OUTCOMES = ("LeadConverted", "LeadDisqualified")

# (name, type): used for the DDL and to insert without asking the server for types.
LEAD_EVENT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("org_id", "LowCardinality(String)"),
    ("lead_id", "String"),
    ("position", "UInt64"),
    ("kind", "LowCardinality(String)"),
    ("activity_kind", "LowCardinality(Nullable(String))"),
    ("occurred_at", "DateTime64(3, 'UTC')"),
    ("source", "LowCardinality(Nullable(String))"),
    ("industry", "LowCardinality(Nullable(String))"),
    ("country", "LowCardinality(Nullable(String))"),
    ("employees", "Nullable(Int64)"),
    ("title", "Nullable(String)"),
)
SCORE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("org_id", "LowCardinality(String)"),
    ("lead_id", "String"),
    ("position", "UInt64"),
    ("at", "DateTime64(3, 'UTC')"),
    ("score", "Float64"),
    ("previous_score", "Nullable(Float64)"),
    ("fit", "Float64"),
    ("engagement", "Float64"),
    ("grade", "LowCardinality(String)"),
    ("model_version", "LowCardinality(String)"),
    ("caused_by_event_id", "String"),
)
FACT_TABLES: dict[str, tuple[tuple[tuple[str, str], ...], str]] = {
    "lead_events": (LEAD_EVENT_COLUMNS, "occurred_at"),
    "score_history": (SCORE_COLUMNS, "at"),
}
PROFILE_COLUMNS = ("source", "industry", "country", "employees", "title")
PII_COLUMNS = tuple(c for c in PROFILE_COLUMNS if c in PII_FIELDS)


class ClickHouseError(RuntimeError):
    """The ClickHouse read model cannot be opened or written."""


class ClickHouseLockedError(ClickHouseError):
    """Another process holds the embedded chDB data directory."""


def _fact_ddl(table: str) -> str:
    columns, time_column = FACT_TABLES[table]
    body = ",\n    ".join(f"{name} {type_}" for name, type_ in columns)
    # The minmax index makes the recovery scan (position > recorded) skip old granules.
    return (
        f"CREATE TABLE IF NOT EXISTS {table} (\n    {body},\n"
        "    INDEX position_idx position TYPE minmax GRANULARITY 4\n)\n"
        "ENGINE = MergeTree\n"
        # Yearly: lead-events go back to 2000 (streams/codec.py EARLIEST), and a CRM
        # backfill in one insert must stay under max_partitions_per_insert_block (100).
        f"PARTITION BY toYear({time_column})\n"
        "ORDER BY (org_id, lead_id, position)"
    )


DDL = (
    _fact_ddl("lead_events"),
    _fact_ddl("score_history"),
    # Appended per batch; max(position) is the answer, ReplacingMergeTree keeps it small.
    f"CREATE TABLE IF NOT EXISTS {POSITIONS_TABLE} (\n"
    "    name String,\n    position UInt64,\n    updated_at DateTime64(3, 'UTC')\n"
    ") ENGINE = ReplacingMergeTree(position)\nORDER BY name",
)


def connect(dsn: str) -> Client:
    """A client on the read model's database (created if missing), for projection and queries.

    ``chdb://`` (in memory), ``chdb://relative/path``, ``chdb:///absolute/path`` (add
    ``?database=name`` to change the database), or ``http(s)://[user:pw@]host:port[/database]``.
    """
    if dsn.startswith("chdb:"):
        client, database = _connect_chdb(dsn)
    elif dsn.startswith(("http://", "https://")):
        client, database = _connect_http(dsn)
    else:
        raise ClickHouseError(f"unsupported ClickHouse DSN {dsn!r}: use chdb://path or http://")
    try:
        client.command(f"CREATE DATABASE IF NOT EXISTS {_identifier(database)}")
        client.database = database
    except Exception:
        client.close()
        raise
    return client


def _connect_chdb(dsn: str) -> tuple[Client, str]:
    rest, _, query = dsn.removeprefix("chdb:").removeprefix("//").partition("?")
    location = unquote(rest)
    path = None if location in ("", "memory", ":memory:") else location
    database = parse_qs(query).get("database", [DEFAULT_DATABASE])[0]
    try:
        return clickhouse_connect.get_client(interface="chdb", path=path), database
    except ProgrammingError as exc:
        raise _chdb_open_error(path, exc) from exc


def _connect_http(dsn: str) -> tuple[Client, str]:
    parts = urlsplit(dsn)
    database = unquote(parts.path.strip("/")) or DEFAULT_DATABASE
    # The database may not exist yet: connect without it, create it, then select it.
    bare = urlunsplit((parts.scheme, parts.netloc, "", parts.query, ""))
    # No session: the projection thread and API requests share this client concurrently,
    # and a server session admits one query at a time.
    client = clickhouse_connect.get_client(dsn=bare, autogenerate_session_id=False)
    return client, database


def _chdb_open_error(path: str | None, exc: Exception) -> ClickHouseError:
    text = str(exc)
    owner = _lock_owner(path) if path else None
    if owner is not None or "Cannot lock file" in text:
        return ClickHouseLockedError(
            f"the embedded ClickHouse (chDB) data at {path} is in use by another process "
            f"({owner or 'unknown'}). chDB allows one process per data directory: with the "
            "embedded default the API process runs the ClickHouse projection and answers "
            "analytics, so no other process (worker, CLI) may open it. To split them, set "
            "LEADSCORE_CLICKHOUSE_DSN to a ClickHouse server (http://host:8123)."
        )
    if "already initialized with path" in text:
        return ClickHouseError(
            f"this process already has chDB open at another path; chDB hosts one data "
            f"directory per process (close every client first): {text}"
        )
    return ClickHouseError(f"cannot open chDB at {path or ':memory:'}: {text}")


def _lock_owner(path: str) -> str | None:
    """Who holds the engine's ``status`` lock, if another process does (None otherwise).

    chDB's own error says only "Error initializing EmbeddedServer" (the lock message goes
    to stderr), so probe the lock the engine takes: an exclusive flock on ``<path>/status``.
    Only called after opening failed, so this process holds no engine on ``path``.
    """
    status = Path(path) / "status"
    try:
        with status.open("rb") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                first = f.read(200).decode(errors="replace").splitlines()
                return first[0].strip() if first else "unknown"
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    except FileNotFoundError:
        return None
    return None


def _identifier(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ClickHouseError(f"invalid ClickHouse database name {name!r}")
    return name


class ClickHouseProjection:
    """Projects the log into ``lead_events`` and ``score_history`` (see the module doc)."""

    name = "clickhouse"
    # Every insert is a new part that ClickHouse merges later, and embedded chDB spends
    # about 10 ms of CPU on one whatever its size: at the head of the log, gather a second
    # of entries per insert rather than a few each poll; behind it, read 20,000 entries
    # per insert rather than the runner's 2,000 (docs/performance.md, "Cheaper
    # projections").
    linger_s = 1.0
    batch_size = 20_000

    def __init__(self, client: Client) -> None:
        self.client = client
        self._ready = False
        # None until recovered: at start and after any failed write.
        self._position: int | None = None

    async def setup(self) -> None:
        await asyncio.to_thread(self._setup)

    async def position(self) -> int:
        """The recorded position. Read-only: only the writer cleans up after a crash."""
        return await asyncio.to_thread(self._current_position)

    async def project(self, entries: Sequence[LogEntry]) -> None:
        await asyncio.to_thread(self._project, entries)

    async def reset(self) -> None:
        await asyncio.to_thread(self._reset)

    def is_data_error(self, exc: BaseException) -> bool:
        # The server (or chDB) refused the rows, or the client could not serialise a
        # value; OperationalError is the connection.
        if isinstance(exc, OperationalError):
            return False
        return isinstance(
            exc,
            DataError | DatabaseError | ProgrammingError | TypeError | ValueError
            | OverflowError | KeyError | struct.error,
        )  # fmt: skip

    async def advance(self, position: int) -> None:
        await asyncio.to_thread(self._advance, position)

    async def reapply(self, entries: Sequence[LogEntry]) -> None:
        await asyncio.to_thread(self._reapply, entries)

    async def close(self) -> None:
        """The client belongs to the caller (it may also serve analytics)."""

    # -- synchronous core, run in a worker thread ---------------------------

    def _setup(self) -> None:
        for ddl in DDL:
            self.client.command(ddl)
        self._ready = True

    def _recorded_position(self) -> int:
        if not self._ready:
            self._setup()
        return self._scalar(
            f"SELECT max(position) FROM {POSITIONS_TABLE} WHERE name = {{name:String}}",
            {"name": self.name},
        )

    def _current_position(self) -> int:
        return self._position if self._position is not None else self._recorded_position()

    def _recovered_position(self) -> int:
        """Before writing: drop rows a crashed or failed write left beyond the position.

        Only the writer may do this (the runner elects one per projection): a reader
        calling it while a batch is being inserted would delete that batch's rows.
        """
        if self._position is None:
            recorded = self._recorded_position()
            for table in FACT_TABLES:
                self._delete_after(table, recorded)
            self._position = recorded
        return self._position

    def _delete_after(self, table: str, position: int) -> None:
        params = {"p": position}
        if self._scalar(f"SELECT count() FROM {table} WHERE position > {{p:UInt64}}", params):
            # A DELETE is a mutation: only pay for it when there is something to delete.
            self.client.command(
                f"DELETE FROM {table} WHERE position > {{p:UInt64}}", parameters=params
            )

    def _scalar(self, sql: str, params: dict[str, Any]) -> int:
        return int(self.client.query(sql, parameters=params).result_rows[0][0])

    def _project(self, entries: Sequence[LogEntry]) -> None:
        current = self._recovered_position()
        fresh = [e for e in entries if e.position > current]
        if not fresh:
            return
        events, scores = fact_rows(fresh)
        self._position = None  # until the position is saved, a failure leaves stray rows
        if events:
            self._insert("lead_events", LEAD_EVENT_COLUMNS, events)
        if scores:
            self._insert("score_history", SCORE_COLUMNS, scores)
        self._forget([e for e in fresh if e.kind == "LeadForgotten"])
        self._save_position(fresh[-1].position)
        self._position = fresh[-1].position

    def _forget(self, entries: Sequence[LogEntry]) -> None:
        """Blank a forgotten person's data in the rows before the LeadForgotten: a mutation,
        which rewrites the parts holding them (the old parts are removed after
        ``old_parts_lifetime``, README "Privacy"). Idempotent, so a re-run changes nothing."""
        for e in entries:
            self.client.command(
                "ALTER TABLE lead_events UPDATE "
                + ", ".join(f"{c} = NULL" for c in PII_COLUMNS)
                + " WHERE org_id = {o:String} AND lead_id = {l:String} AND position < {p:UInt64}",
                parameters={"o": e.event.org_id, "l": e.event.lead_id, "p": e.position},
                settings={"mutations_sync": 1},
            )

    def _advance(self, position: int) -> None:
        if position > self._recovered_position():
            self._save_position(position)
            self._position = position

    def _reapply(self, entries: Sequence[LogEntry]) -> None:
        # Fact rows are keyed by position: insert an entry's row only where it is missing.
        for e in entries:
            events, scores = fact_rows([e])
            for table, columns, rows in (
                ("lead_events", LEAD_EVENT_COLUMNS, events),
                ("score_history", SCORE_COLUMNS, scores),
            ):
                if rows and not self._scalar(
                    f"SELECT count() FROM {table} WHERE position = {{p:UInt64}}",
                    {"p": e.position},
                ):
                    self._insert(table, columns, rows)

    def _insert(
        self, table: str, columns: tuple[tuple[str, str], ...], rows: list[tuple[Any, ...]]
    ) -> None:
        self.client.insert(
            table,
            [list(col) for col in zip(*rows, strict=True)],
            column_names=[name for name, _ in columns],
            column_type_names=[type_ for _, type_ in columns],
            column_oriented=True,
            # Tables made before yearly partitions are monthly: a backfill's batch may
            # touch more months than the default limit of 100 allows in one insert.
            settings={"max_partitions_per_insert_block": 0},
        )

    def _save_position(self, position: int) -> None:
        self.client.insert(
            POSITIONS_TABLE,
            [[self.name], [position], [datetime.now(UTC)]],
            column_names=["name", "position", "updated_at"],
            column_type_names=["String", "UInt64", "DateTime64(3, 'UTC')"],
            column_oriented=True,
        )

    def _reset(self) -> None:
        for table in (*FACT_TABLES, POSITIONS_TABLE):
            self.client.command(f"DROP TABLE IF EXISTS {table} SYNC")
        self._ready = False
        self._position = None


def fact_rows(entries: Sequence[LogEntry]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Rows for ``lead_events`` and ``score_history``, in the column orders above."""
    events: list[tuple[Any, ...]] = []
    scores: list[tuple[Any, ...]] = []
    for e in entries:
        ev = e.event
        if e.kind == "LeadScored":
            components = ev.components or {}
            scores.append(
                (
                    ev.org_id,
                    ev.lead_id,
                    e.position,
                    _utc(ev.scored_at),
                    float(ev.score),
                    None if ev.previous_score is None else float(ev.previous_score),
                    float(components.get("fit", 0.0)),
                    float(components.get("engagement", 0.0)),
                    ev.grade,
                    ev.model_version,
                    ev.caused_by_event_id,
                )
            )
            continue
        if e.kind == "LeadCreated":
            at, profile = ev.created_at, ev.profile
        else:
            at, profile = ev.occurred_at, getattr(ev, "changes", None) or {}
        activity = str(ev.kind) if e.kind == "ActivityRecorded" else None
        events.append(
            (
                ev.org_id,
                ev.lead_id,
                e.position,
                e.kind,
                activity,
                _utc(at),
                *(_profile_value(profile, c) for c in PROFILE_COLUMNS),
            )
        )
    return events, scores


def _profile_value(profile: dict[str, Any], column: str) -> str | int | None:
    value = profile.get(column)
    if value is None:
        return None
    if column == "employees":
        try:
            return int(value)
        except (TypeError, ValueError):
            return None  # an unparseable size is "not set" for analytics
    return str(value)


def _utc(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)
