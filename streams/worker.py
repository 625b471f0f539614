"""The Faust worker: lead-events in batches -> BatchProcessor, with the relay beside it."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import faust
import prometheus_client
import psycopg
import structlog

from leadscore.bootstrap import Engine
from projections.runner import start_projection_thread, worker_projection_names
from streams.processor import BatchStats
from streams.relay import start_relay_thread

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

    @app.agent(lead_events, name="score-leads")
    async def score_leads(stream: faust.StreamT[bytes]) -> None:
        loop = asyncio.get_running_loop()
        async for batch in stream.take_events(s.batch_size, within=s.batch_timeout_ms / 1000):
            values = [event.message.value for event in batch]
            stats = await _process_until_stored(loop, executor, engine, values)
            log.debug("batch", **vars(stats))

    return app


async def _process_until_stored(
    loop: asyncio.AbstractEventLoop,
    executor: ThreadPoolExecutor,
    engine: Engine,
    values: list[bytes | None],
) -> BatchStats:
    """A database outage pauses the stream; it never skips events."""
    while True:
        try:
            return await loop.run_in_executor(executor, engine.processor.process, values)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            log.warning("event store unavailable, retrying batch", error=str(exc))
            await asyncio.sleep(DB_RETRY_SECONDS)


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
