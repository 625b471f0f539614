"""The Faust worker: lead-events in batches -> BatchProcessor, with the relay beside it."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import faust
import prometheus_client
import structlog
from faust.types import Message

from leadscore.bootstrap import Engine
from projections.runner import start_projection_thread, worker_projection_names
from streams import metrics
from streams.dlq import DeadLetter, DeadLetterError, DeadLetterSink, RawMessage, normalize_headers
from streams.processor import TRANSIENT_ERRORS, BatchStats
from streams.relay import kafka_producer, start_relay_thread

log = structlog.get_logger(__name__)

DB_RETRY_SECONDS = 1.0


def create_app(engine: Engine) -> faust.App:
    s = engine.settings
    app = faust.App(
        s.consumer_group,
        broker=f"kafka://{s.kafka_bootstrap}",
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        datadir=str(s.run_path / "faust"),
        web_enabled=False,
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_max_poll_records=s.batch_size,
        stream_buffer_maxsize=4 * s.batch_size,
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
            messages = [raw_message(event.message) for event in batch]
            stats = await _process_until_stored(loop, executor, engine, messages)
            # take_events acks (so commits) the batch once this body returns: the dead
            # letters must be in Kafka by then, or a crash would lose them.
            if stats.dead_letters:
                await _dead_letter_until_delivered(loop, executor, dead_letters, stats)
            log.debug(
                "batch",
                received=stats.received,
                applied=stats.applied,
                duplicates=stats.duplicates,
                dead_lettered=stats.dead_lettered,
                scored=stats.scored,
            )

    return app


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
        publishing = loop.run_in_executor(executor, sink.publish, letters)
        try:
            await asyncio.shield(publishing)
        except asyncio.CancelledError:
            # Stopping: take_events acks the batch on the way out, so let the letters
            # in flight reach Kafka first.
            try:
                await asyncio.wait_for(publishing, sink.timeout + 5)
                metrics.DEAD_LETTERS_PUBLISHED.inc(len(letters))
            except Exception as exc:
                log.error("dead letters may be lost at shutdown", n=len(letters), error=str(exc))
            raise
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
    relay_stop = threading.Event()
    relay_thread = start_relay_thread(engine.relay(), relay_stop)
    names = worker_projection_names(engine.settings)
    projections_thread, projections_stop = start_projection_thread(engine.settings, names)
    worker = faust.Worker(app, loglevel=engine.settings.log_level.upper(), quiet=True)
    try:
        worker.execute_from_commandline()
    finally:
        relay_stop.set()
        projections_stop.set()
        relay_thread.join(10)
        projections_thread.join(10)
