"""Faust's Kafka consumer, delivering each fetched message without four tasks per message.

faust-streaming hands every fetched message to the streams with

    await self.wait_first(callback(message), self.suspend_flow.wait())

so that a delivery blocked on a full stream buffer can be abandoned when a rebalance
suspends the flow. ``wait_first`` wraps the callback, the suspend event and the
consumer's stopped and crashed events in four tasks, waits for the first and cancels
the other three: on this machine that is most of the 150 µs of CPU a Faust agent spends
per message before the agent sees it (see docs/architecture.md, "Where the CPU goes").

The callback can only wait at a few places, all of which are cheap to look at first:
flow control suspended (a rebalance), the producer's buffer above its limit, the
conductor re-indexing its partitions, or a full queue of a channel of that partition.
When none holds, this consumer awaits the callback directly, which then runs to its end
without suspending; otherwise it takes Faust's own guarded path. A delivery that cannot
wait cannot be stuck in a rebalance, so nothing the guard was for is lost.

Everything else is Faust's ``_drain_messages`` as released in the pinned version; a
test (tests/integration/test_consumer.py) fails when that version's loop changes, so an
upgrade re-reads this copy.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from functools import cached_property
from typing import Any, cast

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode import Service

from streams import metrics


class Consumer(faust_aiokafka.Consumer):
    """faust-streaming's aiokafka consumer with a direct delivery when nothing can block."""

    delivered_direct: int = 0
    delivered_guarded: int = 0

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    @cached_property
    def _producer_backlog(self) -> Callable[[], int]:
        # ProducerBuffer.size reads app.conf on every call (a few µs); resolve it once.
        buffer = self.app.producer.buffer
        if self.app.conf.producer_threaded:
            return lambda: buffer.size
        return buffer.pending.qsize

    def can_deliver_without_waiting(self, tp: TP) -> bool:
        """True when the conductor's callback for ``tp`` cannot suspend (see module doc)."""
        app = self.app
        if self.suspend_flow.is_set() or not app.flow_control.is_active():
            return False
        if self._producer_backlog() > app.producer.buffer.max_messages:
            return False
        conductor = app.topics
        if conductor._tp_to_callback_lock.locked():
            return False
        # _tp_index is a defaultdict: .get does not add the partition.
        return not any(chan.queue.full() for chan in conductor._tp_index.get(tp, ()))

    async def _drain_messages(self, fetcher: Any) -> None:
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set

        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        can_deliver_without_waiting = self.can_deliver_without_waiting

        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep

        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                ait = cast(AsyncIterator, getmany(timeout=1.0))

                # Faust: getmany may be called in a loop never releasing the event loop.
                await self.sleep(0)
                if not self.should_stop:
                    direct = guarded = 0
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0

                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            if gap > 1 and r_offset and acks_enabled_for(message.topic):
                                await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None and self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                            # The one change from Faust's loop.
                            if can_deliver_without_waiting(tp):
                                direct += 1
                                await callback(message)
                            else:
                                guarded += 1
                                await self.wait_first(callback(message), self.suspend_flow.wait())
                            set_read_offset(tp, offset)
                        else:
                            self.log.dev(
                                "DROPPED MESSAGE ROFF %r: k=%r v=%r",
                                offset,
                                message.key,
                                message.value,
                            )
                    self._count_deliveries(direct, guarded)
                    unset_flag(CONSUMER_FETCHING)

        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)

    def _count_deliveries(self, direct: int, guarded: int) -> None:
        self.delivered_direct += direct
        self.delivered_guarded += guarded
        if direct:
            metrics.DELIVERIES.labels("direct").inc(direct)
        if guarded:
            metrics.DELIVERIES.labels("guarded").inc(guarded)


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, giving aiokafka the fetch settings of its :class:`Transport`
    (Faust passes neither: the broker then answers a fetch as soon as one byte is there),
    and making its fetches adaptive (:class:`AdaptiveFetch`) when the transport says so."""

    _idle_wait_ms = 0

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # AIOKafkaConsumer hands these to its Fetcher when it starts, which is after this.
        consumer._fetch_min_bytes = transport.fetch_min_bytes
        consumer._fetch_max_wait_ms = transport.fetch_max_wait_ms
        self._idle_wait_ms = transport.fetch_idle_wait_ms
        return consumer

    async def on_start(self) -> None:
        await super().on_start()
        if self._idle_wait_ms > 0:
            AdaptiveFetch(self._consumer._fetcher, idle_wait_ms=self._idle_wait_ms).install()


IDLE_AFTER_EMPTY_FETCHES = 10


class AdaptiveFetch:
    """Fetches sized to the stream: batches under load, one wake-up a second when idle.

    Busy, a fetch waits for the fetcher's ``min_bytes`` or ``max_wait_ms`` (64 KiB or
    20 ms): a batch per fetch, not a fetch per message. Once ``idle_after`` fetches in a
    row brought nothing, a fetch waits for one byte or ``idle_wait_ms``: the broker holds
    it until a message comes and answers at once, so an idle worker fetches about once a
    second rather than fifty times, and the first message after a pause is not held back.
    The first fetch that brings records makes it busy again. aiokafka's fetcher reads
    both settings each time it builds a request, so a change takes effect at the next one.
    """

    def __init__(
        self, fetcher: Any, *, idle_wait_ms: int, idle_after: int = IDLE_AFTER_EMPTY_FETCHES
    ) -> None:
        self.fetcher = fetcher
        self.busy = (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms)
        self.idle = (1, idle_wait_ms)
        self.idle_after = idle_after
        self.empty = 0

    @property
    def is_idle(self) -> bool:
        return self.empty >= self.idle_after

    def install(self) -> None:
        proc = self.fetcher._proc_fetch_request

        async def adaptive(assignment: Any, node_id: Any, request: Any) -> bool:
            got = await proc(assignment, node_id, request)
            self.seen(bool(got))
            return bool(got)

        self.fetcher._proc_fetch_request = adaptive

    def seen(self, got_records: bool) -> None:
        self.empty = 0 if got_records else self.empty + 1
        size, wait = self.idle if self.is_idle else self.busy
        self.fetcher._fetch_min_bytes, self.fetcher._fetch_max_wait_ms = size, wait


# Faust's own: one byte, and 1.5 s to wait for it.
FETCH_MIN_BYTES = 1
FETCH_MAX_WAIT_MS = 1500


class Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with :class:`Consumer` and its fetch settings."""

    Consumer = Consumer
    fetch_min_bytes = FETCH_MIN_BYTES
    fetch_max_wait_ms = FETCH_MAX_WAIT_MS
    fetch_idle_wait_ms = 0  # 0: fetches keep the two settings above (no AdaptiveFetch)


def use_direct_delivery(
    app: Any,
    *,
    fetch_min_bytes: int = FETCH_MIN_BYTES,
    fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS,
    fetch_idle_wait_ms: int = 0,
) -> None:
    """Make ``app`` consume through :class:`Transport`; call before declaring topics.

    A fetch is answered when ``fetch_min_bytes`` are there or ``fetch_max_wait_ms`` have
    passed. With one byte, a trickle of lead-events costs a fetch (and its round of the
    consumer's loop, and the broker's work) for every few messages.
    """
    transport = Transport(app.conf.broker_consumer, app)
    transport.fetch_min_bytes = fetch_min_bytes
    transport.fetch_max_wait_ms = fetch_max_wait_ms
    transport.fetch_idle_wait_ms = fetch_idle_wait_ms
    app.transport = transport
