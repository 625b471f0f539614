"""Console progress: a spinner while a step runs, then a tick and how long it took."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console


class Progress:
    def __init__(self, console: Console | None = None) -> None:
        # stderr keeps stdout clean for whatever the caller prints (e.g. `status` tables).
        self.console = console or Console(stderr=True)

    @contextmanager
    def step(self, text: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            with self.console.status(f"{text} …"):
                yield
        except BaseException:
            self.console.print(f"[red]✗[/] {text} [dim]({time.monotonic() - started:.1f}s)[/]")
            raise
        self.console.print(f"[green]✓[/] {text} [dim]({time.monotonic() - started:.1f}s)[/]")

    def note(self, text: str) -> None:
        self.console.print(f"[cyan]•[/] {text}")
