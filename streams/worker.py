"""The Faust worker: lead-events in batches -> BatchProcessor, with the relay beside it."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn

import faust
import prometheus_client
import structlog
from faust.types import Message

from leadscore.bootstrap import Engine
from projections.runner import start_projection_thread, worker_projection_names
from streams import metrics
from streams.consumer import use_direct_delivery
from streams.decay import DecayTimer
from streams.dlq import DeadLetter, DeadLetterError, DeadLetterSink, RawMessage, normalize_headers
from streams.processor import TRANSIENT_ERRORS, BatchStats
from streams.relay import kafka_producer, start_relay_thread
from streams.webhooks import start_dispatcher_thread

log = structlog.get_logger(__name__)

DB_RETRY_SECONDS = 1.0


def faust_worker(app: faust.App, loglevel: str) -> faust.Worker:
    """A Faust worker for ``app`` logging at ``loglevel``, without the terminal spinner.

    At WARNING and above Faust spins a spinner on every log record, and for that sets the
    root logger to DEBUG: every debug line of aiokafka, Faust and mode would be made into
    a record (5% of a busy worker's profile samples at 500 events/s)."""
    worker = faust.Worker(app, loglevel=loglevel.upper(), quiet=True)
    worker.spinner = None
    return worker


def faust_app(group: str, bootstrap: str, datadir: str | Path, **settings: Any) -> faust.App:
    """A Faust app on raw bytes as the worker runs one (the benchmarks' Faust peers and the
    consumer tests' probe too): no web server, no topic declaration, memory store."""
    return faust.App(
        group,
        broker=f"kafka://{bootstrap}",
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        datadir=str(datadir),
        web_enabled=False,
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        **settings,
    )


def create_app(engine: Engine) -> faust.App:
    s = engine.settings
    app = faust_app(
        s.consumer_group,
        s.kafka_bootstrap,
        s.run_path / "faust",
        broker_max_poll_records=s.batch_size,
        stream_buffer_maxsize=4 * s.batch_size,
        # Waiting for the streams to drain hangs a shutdown while the database is
        # down; applying is idempotent by event id, and the agent itself finishes or
        # abandons its batch without committing it (see score_leads).
        stream_wait_empty=False,
    )
    if s.consumer_direct_delivery:
        use_direct_delivery(
            app,
            fetch_min_bytes=s.consumer_fetch_min_bytes,
            fetch_max_wait_ms=s.consumer_fetch_max_wait_ms,
        )
    lead_events = app.topic(
        s.topic_lead_events, key_type=bytes, value_type=bytes, partitions=s.topic_partitions
    )
    # One thread: the event store is synchronous and batches must apply in order.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="event-store")
    dead_letters = DeadLetterSink(kafka_producer(s.kafka_bootstrap), s.topic_dlq)

    @app.agent(lead_events, name="score-leads")
    async def score_leads(stream: faust.StreamT[bytes]) -> None:
        loop = asyncio.get_running_loop()
        async for batch in stream.take_events(s.batch_size, within=s.batch_timeout_ms / 1000):
            # take_events acks (so commits) the batch when this body ends, also when it
            # ends by an exception or a cancellation at shutdown: the body must not end
            # before the batch is stored and its dead letters are in Kafka.
            messages = [raw_message(event.message) for event in batch]
            work = asyncio.ensure_future(
                _store_batch(loop, executor, engine, dead_letters, messages)
            )
            try:
                stats = await asyncio.shield(work)
            except asyncio.CancelledError:
                await _finish_or_die(work)
                raise
            except Exception as exc:  # a bug: better redelivered than committed unstored
                _die("batch failed unexpectedly", exc)
            log.debug(
                "batch",
                received=stats.received,
                applied=stats.applied,
                duplicates=stats.duplicates,
                dead_lettered=stats.dead_lettered,
                scored=stats.scored,
            )

    if s.decay_interval_s > 0:
        decay = DecayTimer(
            engine.processor,
            s.pg_dsn,
            after=timedelta(seconds=s.decay_after_s),
            batch=s.decay_batch,
        )

        @app.timer(interval=float(s.decay_interval_s))
        async def rescore_stale() -> None:
            # The same single thread as the batches: the event store is used by one at a time.
            try:
                await asyncio.get_running_loop().run_in_executor(executor, decay.tick)
            except TRANSIENT_ERRORS as exc:
                log.warning("decay tick skipped; next interval retries", error=repr(exc))

    return app


SHUTDOWN_GRACE_SECONDS = 30.0


async def _store_batch(
    loop: asyncio.AbstractEventLoop,
    executor: ThreadPoolExecutor,
    engine: Engine,
    sink: DeadLetterSink,
    messages: list[RawMessage],
) -> BatchStats:
    stats = await _process_until_stored(loop, executor, engine, messages)
    if stats.dead_letters:
        await _dead_letter_until_delivered(loop, executor, sink, stats)
    return stats


async def _finish_or_die(work: asyncio.Future[BatchStats]) -> None:
    """Stopping mid-batch: let it finish, or leave without committing it (as a crash would)."""
    try:
        await asyncio.wait_for(work, SHUTDOWN_GRACE_SECONDS)
    except Exception as exc:
        _die("stopping with a batch not stored; it will be redelivered", exc)


def _die(reason: str, exc: BaseException) -> NoReturn:
    # Exiting before take_events acks the batch keeps its offsets uncommitted, so
    # Kafka redelivers it to the next worker; the event ids make that harmless.
    log.critical(reason, error=repr(exc))
    sys.stderr.flush()
    os._exit(70)


def raw_message(message: Message) -> RawMessage:
    timestamp = message.timestamp
    return RawMessage(
        value=message.value,
        key=message.key,
        headers=normalize_headers(message.headers),
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        timestamp_ms=int(timestamp * 1000) if timestamp else None,
    )


async def _process_until_stored(
    loop: asyncio.AbstractEventLoop,
    executor: ThreadPoolExecutor,
    engine: Engine,
    messages: list[RawMessage],
) -> BatchStats:
    """A database outage pauses the stream; it never skips events."""
    while True:
        try:
            return await loop.run_in_executor(executor, engine.processor.process, messages)
        except TRANSIENT_ERRORS as exc:
            log.warning("event store unavailable, retrying batch", error=str(exc))
            await asyncio.sleep(DB_RETRY_SECONDS)


async def _dead_letter_until_delivered(
    loop: asyncio.AbstractEventLoop,
    executor: ThreadPoolExecutor,
    sink: DeadLetterSink,
    stats: BatchStats,
) -> None:
    """Kafka away: the stream pauses until the letters are acknowledged (maybe twice)."""
    letters: list[DeadLetter] = stats.dead_letters
    while True:
        try:
            await loop.run_in_executor(executor, sink.publish, letters)
        except DeadLetterError as exc:
            log.warning("dead-letter topic unavailable, retrying", error=str(exc))
            await asyncio.sleep(DB_RETRY_SECONDS)
        else:
            metrics.DEAD_LETTERS_PUBLISHED.inc(len(letters))
            return


def run_worker(engine: Engine) -> None:
    if engine.settings.metrics_port:
        prometheus_client.start_http_server(engine.settings.metrics_port, addr="127.0.0.1")
    app = create_app(engine)
    # Beside the batches: the outbox relay and webhooks (unless `leadscore relay` runs
    # them in a process of their own), and the projections this worker runs.
    stop = threading.Event()
    threads = start_outbox_threads(engine, stop) if engine.settings.worker_relay else []
    names = worker_projection_names(engine.settings)
    projections_thread, projections_stop = start_projection_thread(engine.settings, names)
    worker = faust_worker(app, engine.settings.log_level)
    try:
        worker.execute_from_commandline()
    finally:
        engine.processor.close()  # the sinks' last counts (drift)
        stop.set()
        projections_stop.set()
        for thread in [*threads, projections_thread]:
            thread.join(10)


def start_outbox_threads(engine: Engine, stop: threading.Event) -> list[threading.Thread]:
    """What follows the event store's log to the outside: score-events and webhooks."""
    return [
        start_relay_thread(engine.relay(), stop),
        start_dispatcher_thread(engine.store, engine.settings, stop),
    ]


def run_relay(engine: Engine) -> None:
    """The outbox threads in a process of their own (`leadscore relay`), until SIGTERM/SIGINT:
    on a small machine a worker with `LEADSCORE_WORKER_RELAY=0` keeps its GIL for batches."""
    import signal

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if engine.settings.metrics_port:
        prometheus_client.start_http_server(engine.settings.metrics_port, addr="127.0.0.1")
    threads = start_outbox_threads(engine, stop)
    stop.wait()
    for thread in threads:
        thread.join(10)
