"""`leadscore dlq list|show|replay`: inspect dead letters and re-drive them after a fix.

A letter too large for Kafka went out by reference (its bytes in PostgreSQL,
``dead_letter_payloads``): ``show`` and ``replay`` fetch them and check their sha256.

Letters are named by their offset on the DLQ topic (``PARTITION:OFFSET`` outside
partition 0, where the worker writes them all). Replays are recorded in PostgreSQL
(``dlq_replays``); replaying a letter twice needs ``--force``.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.table import Table

from adapters.settings import Settings, get_settings
from streams.dlq import (
    DETAIL,
    ERROR_CLASS,
    FIRST_FAILURE_AT,
    PAYLOAD_REF,
    PAYLOAD_SHA256,
    DeadLetterError,
    PayloadStore,
    ReplayLog,
    StoredLetter,
    parse_ref,
    read_letters,
    replay,
    resolve,
)

app = typer.Typer(help="Dead letters on lead-events.dlq: list, show, replay.", no_args_is_help=True)
console = Console() if sys.stdout.isatty() else Console(width=160)


def _letters(s: Settings) -> list[StoredLetter]:
    try:
        return read_letters(s.kafka, s.topic_dlq)
    except DeadLetterError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc


def _resolved(s: Settings, letters: list[StoredLetter]) -> list[StoredLetter]:
    payloads = PayloadStore(s.pg_dsn)
    try:
        return [resolve(x, payloads) for x in letters]
    except DeadLetterError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc


def _key(letter: StoredLetter, width: int = 40) -> str:
    if letter.key is None:
        return "-"
    text = letter.key.decode("utf-8", "replace")
    return text if len(text) <= width else text[: width - 1] + "…"


@app.command("list")
def list_letters(
    reason: Annotated[str | None, typer.Option(help="Only letters with this reason")] = None,
    limit: Annotated[int, typer.Option(help="Show the newest N letters; 0 = all")] = 100,
) -> None:
    """The dead letters: offset, first failure, reason, error class, source, key."""
    s = get_settings()
    letters = _letters(s)
    replayed = ReplayLog(s.pg_dsn, s.topic_dlq).replayed()
    if reason:
        letters = [x for x in letters if x.reason == reason]
    shown = letters[-limit:] if limit else letters
    table = Table(
        "offset",
        "first failure",
        "reason",
        "error class",
        "source",
        "key",
        "replayed",
        title=f"{s.topic_dlq}: {len(letters):,} dead letters",
    )
    for x in shown:
        at = replayed.get((x.partition, x.offset))
        table.add_row(
            x.ref,
            x.header(FIRST_FAILURE_AT)[:23],
            x.reason,
            x.header(ERROR_CLASS),
            x.source,
            _key(x),
            at.isoformat(timespec="seconds") if at else "",
        )
    console.print(table)
    if len(shown) < len(letters):
        console.print(f"(the newest {len(shown)}; --limit 0 shows all)")


@app.command()
def show(offset: Annotated[str, typer.Argument(help="OFFSET or PARTITION:OFFSET")]) -> None:
    """One dead letter: its headers, and the decoded record when it decodes."""
    s = get_settings()
    try:
        wanted = parse_ref(offset)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    found = [x for x in _letters(s) if (x.partition, x.offset) == wanted]
    if not found:
        console.print(f"[red]no dead letter at {offset} on {s.topic_dlq}[/red]")
        raise typer.Exit(1)
    (letter,) = _resolved(s, found[:1])
    table = Table("header", "value", title=f"dead letter {letter.ref}")
    table.add_row("(key)", _key(letter, 200))
    table.add_row("(value)", f"{len(letter.value or b''):,} bytes")
    for name, value in letter.headers:
        table.add_row(name, value.decode("utf-8", "replace"))
    console.print(table)
    console.print(f"[bold]why:[/bold] {letter.reason}: {letter.header(DETAIL)}")
    if letter.by_reference:
        console.print(
            f"[bold]value kept by reference:[/bold] {letter.header(PAYLOAD_REF)} "
            f"sha256 {letter.header(PAYLOAD_SHA256)}"
        )
    console.print(_decoded(s, letter))


def _decoded(s: Settings, letter: StoredLetter) -> str:
    from streams.wire import SchemaCatalog

    try:
        record = SchemaCatalog.from_settings(s).decode(letter.value)
    except Exception as exc:  # whatever made it a dead letter may make it undecodable
        return f"not decodable: {type(exc).__name__}: {exc}"
    return orjson.dumps(record, default=str, option=orjson.OPT_INDENT_2).decode()


@app.command("replay")
def replay_letters(
    all_: Annotated[
        bool, typer.Option("--all", help="Every letter not replayed yet (with --force: every one)")
    ] = False,
    offsets: Annotated[
        list[str] | None, typer.Option("--offset", help="A letter to replay; repeatable")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replay letters that were replayed before")] = False,
) -> None:
    """Re-produce letters' original key and value to lead-events (after fixing the cause)."""
    if all_ == bool(offsets):
        raise typer.BadParameter("give --all or one or more --offset")
    s = get_settings()
    log = ReplayLog(s.pg_dsn, s.topic_dlq)
    letters = _letters(s)
    done = log.replayed()
    if all_:
        chosen = letters if force else [x for x in letters if (x.partition, x.offset) not in done]
        skipped = len(letters) - len(chosen)
    else:
        try:
            wanted = [parse_ref(o) for o in offsets or []]
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
        by_ref = {(x.partition, x.offset): x for x in letters}
        missing = [f"{p}:{o}" for p, o in wanted if (p, o) not in by_ref]
        if missing:
            console.print(f"[red]no dead letter at {', '.join(missing)}[/red]")
            raise typer.Exit(1)
        again = [by_ref[w].ref for w in wanted if w in done]
        if again and not force:
            console.print(
                f"[red]already replayed: {', '.join(again)}; --force replays them again[/red]"
            )
            raise typer.Exit(1)
        chosen = [by_ref[w] for w in dict.fromkeys(wanted)]
        skipped = 0
    if not chosen:
        console.print(f"nothing to replay ({skipped} already replayed; --force replays them)")
        return
    from streams.relay import kafka_producer

    chosen = _resolved(s, chosen)
    try:
        n = replay(
            chosen,
            # A letter kept by reference is as large as the broker allowed the original.
            kafka_producer(s.kafka, **{"message.max.bytes": s.kafka_max_message_bytes}),
            s.topic_lead_events,
            log,
            now=datetime.now(UTC),
        )
    except DeadLetterError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    note = f", {skipped} already replayed skipped" if skipped else ""
    console.print(f"replayed {n} dead letter(s) to {s.topic_lead_events}{note}")
