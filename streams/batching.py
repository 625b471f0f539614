"""Adaptive batches for a Faust stream: take what has arrived and go.

Faust's ``Stream.take_events(max_, within)`` hands over a batch when ``max_`` events are
buffered or, otherwise, every ``within`` seconds on a timer that runs whether or not
anything arrived. On a slow stream an event waits for that timer (up to ``within``, 50 ms
in the worker before), and an idle stream wakes the agent every ``within``.

``take_adaptive`` is the same buffer with a different wait ("smart batching"):

- idle, it sleeps until the first event arrives (no timer);
- then it keeps taking while events keep coming: it hands over the batch once ``quiet``
  seconds pass with no new event, or ``max_`` events are in, or the first has waited
  ``max_wait`` seconds;
- while the agent works on a batch, the stream goes on filling a new buffer (up to
  ``max_``; take_events holds the stream back until the batch is done);
- so on a slow stream a batch is what one fetch brought, handed over within ``quiet`` of
  its last event; on a busy one (a backlog, or lead-events arriving faster than the agent
  handles them) the next batch has filled while the previous one was handled, and
  batches grow towards ``max_``.

Acknowledgements are take_events' own: the stream's acks are off while it runs, and a
batch's events are acked when the agent's body for it ends (also by an exception), so an
offset is committed only after its batch was handled. The code follows Faust 0.15's
``take_events`` except for the wait and the buffer handed over whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from faust.types import EventT, StreamT


async def take_adaptive(
    stream: StreamT[Any], max_: int, *, quiet: float, max_wait: float
) -> AsyncIterator[Sequence[EventT]]:
    """Batches of at most ``max_`` events, each handed over when no event came for
    ``quiet`` seconds, or when full, or ``max_wait`` seconds after its first event."""
    if max_ < 1 or quiet <= 0 or max_wait < quiet:
        raise ValueError(f"need max_ >= 1 and 0 < quiet <= max_wait: {max_}, {quiet}, {max_wait}")
    s: Any = stream  # Faust's typing leaves out the Service methods used here
    events: list[EventT] = []  # the buffer: filled while the agent works on a batch
    arrived = asyncio.Event()  # the buffer is not empty
    full = asyncio.Event()
    consumed = asyncio.Event()
    enable_acks: bool = s.enable_acks

    async def add_to_buffer(value: Any) -> Any:
        try:
            event = s.current_event
            if event is None:
                raise RuntimeError("take_adaptive found current_event is None")
            events.append(event)
            arrived.set()
            if len(events) >= max_:
                full.set()
                consumed.clear()
                await s.wait(consumed)  # never more than max_ in a batch
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            s.log.exception("Error adding to take buffer: %r", exc)
            await s.crash(exc)
        return value

    s.enable_acks = False
    s.add_processor(add_to_buffer)
    s._enable_passive(s.channel)
    try:
        while not s.should_stop:
            if not events and await s.wait_for_stopped(arrived):
                break  # stopped while idle
            deadline = s.loop.time() + max_wait
            while len(events) < max_:
                before, left = len(events), deadline - s.loop.time()
                if left <= 0 or await s.wait_for_stopped(full, timeout=min(quiet, left)):
                    break
                if len(events) == before:
                    break  # nothing came for ``quiet``: take what arrived
            if not events:
                continue
            # Hand the buffer over and start a new one, so the stream goes on filling it
            # (up to max_) while the agent works: under load the next batch is ready.
            batch = events[:]
            events.clear()
            arrived.clear()
            full.clear()
            consumed.set()
            try:
                yield batch
            finally:
                for event in batch:  # only this batch's: the buffer's are not handled yet
                    await s.ack(event)
    finally:
        s.enable_acks = enable_acks
        s._processors.remove(add_to_buffer)
