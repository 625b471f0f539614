"""The Faust worker: lead-events in batches -> BatchProcessor, with the relay beside it.

Beside the batches, supervised background tasks (streams/supervise.py) that restart with
backoff on any error: the projections, the score-event relay, the webhook dispatcher and
the decay timer (elected: one per consumer group). Their state is in ``/health`` and in
``leadscore_background_alive`` on the metrics port.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn

import faust
import structlog
from faust.types import Message
from faust.types.auth import CredentialsT
from prometheus_client import REGISTRY

from adapters.eventstore import DATABASE_UNAVAILABLE
from adapters.gc_settle import settle_gc
from adapters.positions import SessionLock
from adapters.settings import Settings
from adapters.webhook_secrets import SecretBox, SecretKeyError
from projections.runner import run_projections, worker_projection_names
from streams import metrics
from streams.batching import take_adaptive
from streams.bootstrap import Engine
from streams.consumer import use_direct_delivery
from streams.decay import DecayTimer, decay_lock_name, run_decay
from streams.dlq import (
    DeadLetter,
    DeadLetterError,
    DeadLetterSink,
    PayloadStore,
    RawMessage,
    normalize_headers,
)
from streams.errors import classify
from streams.gate import Gate
from streams.probes import ShutdownDeadline, WorkerProbes, pg_reachable
from streams.processor import TRANSIENT_ERRORS, BatchStats
from streams.relay import kafka_producer
from streams.supervise import Supervisor, health, serve_metrics, supervise
from streams.tracing import TraceContexts, Tracing
from streams.webhook_dispatcher import DispatchConfig, WebhookDispatcher

log = structlog.get_logger(__name__)

DB_RETRY_SECONDS = 1.0
# A batch that failed for a reason not its events' (streams/errors.py) is retried after
# this many seconds, doubling up to the cap while it keeps failing.
RETRY_BASE_SECONDS = 1.0
RETRY_CAP_SECONDS = 30.0


class _Worker(faust.Worker):
    """Faust's worker, telling ``on_stop_signal`` when SIGTERM or SIGINT asks it to stop."""

    on_stop_signal: Callable[[], None] | None = None

    def _schedule_shutdown(self, signal: Any) -> None:
        if self.on_stop_signal is not None:
            self.on_stop_signal()
        super()._schedule_shutdown(signal)


def faust_worker(
    app: faust.App, loglevel: str, on_stop_signal: Callable[[], None] | None = None
) -> faust.Worker:
    """A Faust worker for ``app`` logging at ``loglevel``, without the terminal spinner.

    At WARNING and above Faust spins a spinner on every log record, and for that sets the
    root logger to DEBUG: every debug line of aiokafka, Faust and mode would be made into
    a record (5% of a busy worker's profile samples at 500 events/s)."""
    worker = _Worker(app, loglevel=loglevel.upper(), quiet=True)
    worker.spinner = None
    worker.on_stop_signal = on_stop_signal
    return worker


def faust_app(
    group: str, kafka: Mapping[str, str], datadir: str | Path, **settings: Any
) -> faust.App:
    """A Faust app on raw bytes as the worker runs one (the benchmarks' Faust peers and the
    consumer tests' probe too): no web server, no topic declaration, memory store."""
    return faust.App(
        group,
        broker=[f"kafka://{b.strip()}" for b in kafka["bootstrap.servers"].split(",")],
        broker_credentials=faust_credentials(kafka),
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


def faust_credentials(kafka: Mapping[str, str]) -> CredentialsT | None:
    """The librdkafka security settings of ``kafka`` (Settings.kafka) as Faust's, so the
    Faust consumer authenticates as every other client of the engine does."""
    protocol = kafka.get("security.protocol", "PLAINTEXT").upper()
    if protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
        raise ValueError(f"unknown Kafka security protocol {protocol!r}")
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=kafka.get("ssl.ca.location") or None)
        if kafka.get("ssl.certificate.location"):
            context.load_cert_chain(
                kafka["ssl.certificate.location"], kafka.get("ssl.key.location") or None
            )
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=kafka["sasl.username"],
            password=kafka["sasl.password"],
            mechanism=kafka.get("sasl.mechanism", "PLAIN"),
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def create_app(
    engine: Engine,
    executor: ThreadPoolExecutor | None = None,
    probes: WorkerProbes | None = None,
    deadline: ShutdownDeadline | None = None,
) -> faust.App:
    """The worker's Faust app; ``executor`` is its one event-store thread (made here if
    not given; run_worker shares it with the decay timer). ``probes`` learns of the
    partitions and the loop's turns; ``deadline`` bounds the finish of the batch in hand."""
    s = engine.settings
    if deadline is None:
        deadline = ShutdownDeadline(s.shutdown_timeout_s)
    app = faust_app(
        s.consumer_group,
        s.kafka,
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
            fetch_idle_wait_ms=s.consumer_fetch_idle_wait_ms,
        )
    lead_events = app.topic(
        s.topic_lead_events, key_type=bytes, value_type=bytes, partitions=s.topic_partitions
    )
    # One thread: the event store is synchronous and batches must apply in order.
    if executor is None:
        executor = event_store_executor()
    dead_letters = DeadLetterSink(
        kafka_producer(s.kafka),
        s.topic_dlq,
        payloads=PayloadStore(s.pg_dsn, s.dlq_retention_ms),
        max_inline_bytes=s.dlq_max_inline_bytes,
    )

    if probes is not None:
        watched = probes

        @app.on_partitions_assigned.connect
        async def on_assigned(_app: Any, assigned: set[Any], **_kw: Any) -> None:
            watched.assigned(assigned)

        @app.on_partitions_revoked.connect
        async def on_revoked(_app: Any, revoked: set[Any], **_kw: Any) -> None:
            watched.revoked(revoked)

        @app.timer(interval=1.0, name="liveness")
        async def liveness() -> None:
            watched.beat()

    if s.consumer_lag_interval_s > 0:

        @app.timer(interval=float(s.consumer_lag_interval_s), name="consumer-lag")
        async def consumer_lag() -> None:
            await update_consumer_lag(app.consumer)

    @app.agent(lead_events, name="score-leads")
    async def score_leads(stream: faust.StreamT[bytes]) -> None:
        loop = asyncio.get_running_loop()
        batches = take_adaptive(
            stream, s.batch_size, quiet=s.batch_quiet_ms / 1000, max_wait=s.batch_timeout_ms / 1000
        )
        async for batch in batches:
            # take_adaptive acks (so commits) the batch when this body ends, also when it
            # ends by an exception or a cancellation at shutdown: the body must not end
            # before the batch is stored and its dead letters are in Kafka.
            messages = [raw_message(event.message) for event in batch]
            work = asyncio.ensure_future(
                _store_batch(loop, executor, engine, dead_letters, messages)
            )
            try:
                stats = await asyncio.shield(work)
            except asyncio.CancelledError:
                # Stopping: the batch in hand gets what is left of the shutdown time but
                # a reserve for the commit and the producers' flush.
                await _finish_or_die(work, deadline.remaining(s.shutdown_timeout_s) * 0.6)
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

    return app


async def update_consumer_lag(consumer: Any) -> None:
    """``leadscore_consumer_lag_messages`` for the partitions this worker is assigned
    now: the broker's high watermark minus the group's committed offset (the earliest
    offset where nothing is committed yet). Partitions moved away drop their series."""
    assigned = sorted(consumer.assignment())
    if not assigned:
        metrics.CONSUMER_LAG.clear()
        return
    highwaters = await consumer.highwaters(*assigned)
    committed = {tp: consumer._committed_offset.get(tp) for tp in assigned}
    missing = [tp for tp, offset in committed.items() if offset is None]
    if missing:
        committed.update(await consumer.earliest_offsets(*missing))
    metrics.CONSUMER_LAG.clear()
    for tp in assigned:
        high, done = highwaters.get(tp), committed.get(tp)
        if high is not None and done is not None:
            metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(0, high - done))


def event_store_executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="event-store")


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


async def _finish_or_die(work: asyncio.Future[BatchStats], within: float) -> None:
    """Stopping mid-batch: let it finish, or leave without committing it (as a crash would)."""
    try:
        await asyncio.wait_for(work, within)
    except Exception as exc:
        _die("stopping with a batch not stored; it will be redelivered", exc)


def _die(reason: str, exc: BaseException) -> NoReturn:
    # Exiting before take_adaptive acks the batch keeps its offsets uncommitted, so
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
    """A failure not about the events (a service away, a model missing, most of the batch
    failing: streams/errors.py) pauses the stream and retries the batch with backoff; it
    never dead-letters good events nor skips them."""
    delay = RETRY_BASE_SECONDS
    while True:
        try:
            return await loop.run_in_executor(executor, engine.processor.process, messages)
        except TRANSIENT_ERRORS as exc:
            metrics.BATCH_RETRIES.labels(type(exc).__name__).inc()
            log.warning(
                "batch not stored, retrying",
                kind=classify(exc),
                error=type(exc).__name__,
                cause=type(exc.__cause__).__name__ if exc.__cause__ else None,
                wait=delay,
            )
            await asyncio.sleep(delay)
            delay = min(RETRY_CAP_SECONDS, delay * 2)


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


def use_tracing(engine: Engine, tracing: Tracing) -> None:
    """Turn traces on for this engine's batches (streams/tracing.py)."""
    engine.processor.tracing = tracing
    if tracing.enabled and engine.processor.contexts is None:
        engine.processor.contexts = TraceContexts(engine.settings.pg_dsn)


def run_worker(engine: Engine) -> None:
    """Until SIGTERM or SIGINT; then a stop within ``shutdown_timeout_s`` (streams/probes.py)."""
    s = engine.settings
    tracing = Tracing.from_settings(s)
    use_tracing(engine, tracing)
    executor = event_store_executor()
    probes = WorkerProbes(pg_reachable(s.pg_dsn))
    deadline = ShutdownDeadline(s.shutdown_timeout_s, on_start=probes.stopping)
    app = create_app(engine, executor, probes, deadline)
    # Beside the batches: the outbox relay and webhooks (unless `leadscore relay` runs
    # them in a process of their own), the projections this worker runs, the decay timer.
    stop = threading.Event()
    tasks = start_outbox_tasks(engine, stop, tracing) if s.worker_relay else []
    names = worker_projection_names(s)
    if names:
        tasks.append(supervise("projections", projections_work(s, names), stop))
    if s.decay_interval_s > 0:
        tasks.append(supervise("decay", decay_work(engine, executor), stop))
    if s.worker_gate:
        tasks.append(supervise("gate", gate_work(engine), stop))
    if s.metrics_port:
        serve_metrics(
            s.metrics_port,
            lambda: health(tasks, {"role": "worker"}),
            s.metrics_host,
            {"/healthz": probes.live, "/readyz": probes.ready},
        )
    worker = faust_worker(app, s.log_level, on_stop_signal=deadline.start)
    settle_gc()
    code: int | str | None = 0
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code
        raise
    except BaseException:
        code = 1
        raise
    finally:
        # Faust has stopped the consumer and committed what the agent acked; now the
        # background tasks (the relay flushes its producer), in what time is left.
        engine.processor.close()  # the sinks' last counts (drift)
        stop.set()
        for task in tasks:
            task.join(max(0.1, deadline.remaining(10.0) - 1.0))
        tracing.shutdown()  # the last spans exported
        deadline.cancel()
        log.info(
            "worker stopped",
            exit_code=code,
            took_s=round(deadline.elapsed(), 2),
            timeout_s=s.shutdown_timeout_s,
            **event_counts(),
        )


def event_counts() -> dict[str, int]:
    """This process's lead-events by outcome (leadscore_lead_events_total)."""
    return {
        outcome: int(
            REGISTRY.get_sample_value("leadscore_lead_events_total", {"outcome": outcome}) or 0
        )
        for outcome in ("received", "applied", "duplicate", "dead_lettered")
    }


def projections_work(settings: Settings, names: list[str]) -> Callable[[threading.Event], None]:
    """The projections on an event loop of their own, until ``stop``; raises what they raise."""

    async def main(stop: threading.Event) -> None:
        done = asyncio.Event()

        async def watch() -> None:
            while not stop.is_set():
                await asyncio.sleep(0.2)
            done.set()

        watcher = asyncio.ensure_future(watch())
        try:
            await run_projections(settings, names, done)
        finally:
            watcher.cancel()

    return lambda stop: asyncio.run(main(stop))


def decay_work(engine: Engine, executor: ThreadPoolExecutor) -> Callable[[threading.Event], None]:
    """The decay timer: elected once per consumer group, its ticks on the event-store thread
    (the event store is used by one thread at a time)."""
    s = engine.settings
    timer = DecayTimer(
        engine.processor, s.pg_dsn, after=timedelta(seconds=s.decay_after_s), batch=s.decay_batch
    )

    def on_store_thread(tick: Callable[[], int]) -> int:
        return executor.submit(tick).result()

    def work(stop: threading.Event) -> None:
        lock = SessionLock(s.pg_dsn, decay_lock_name(s.consumer_group))
        run_decay(timer, lock, float(s.decay_interval_s), on_store_thread, stop)

    return work


def relay_work(engine: Engine, tracing: Tracing | None = None) -> Callable[[threading.Event], None]:
    """The score-event relay, made anew on each (re)start."""

    def work(stop: threading.Event) -> None:
        with engine.relay() as relay:
            if tracing is not None:
                relay.use_tracing(tracing, engine.settings.pg_dsn)
            relay.run(stop)

    return work


def dispatcher_work(
    engine: Engine, box: SecretBox, tracing: Tracing | None = None
) -> Callable[[threading.Event], None]:
    """The webhook dispatcher, made anew on each (re)start."""

    def work(stop: threading.Event) -> None:
        s = engine.settings
        try:
            dispatcher = WebhookDispatcher(
                engine.store, s.pg_dsn, box, DispatchConfig.from_settings(s)
            )
        except DATABASE_UNAVAILABLE as exc:  # a worker may start before PostgreSQL
            log.warning("webhook dispatcher waiting for PostgreSQL", error=str(exc))
            raise
        if tracing is not None:
            dispatcher.use_tracing(tracing, s.pg_dsn)
        with dispatcher:
            dispatcher.run(stop)

    return work


def gate_work(engine: Engine) -> Callable[[threading.Event], None]:
    """The ingress gate (streams/gate.py): tenants' per-org topics into lead-events; every
    worker runs one, in a consumer group of their own that splits the partitions."""

    def work(stop: threading.Event) -> None:
        s = engine.settings
        producer = kafka_producer(s.kafka)
        gate = Gate(
            s.kafka,
            lead_events_topic=s.topic_lead_events,
            group=f"{s.consumer_group}-gate",
            catalog=engine.decoder,  # foreign schema ids never reach lead-events
            producer=producer,
            dead_letters=DeadLetterSink(
                producer,
                s.topic_dlq,
                payloads=PayloadStore(s.pg_dsn, s.dlq_retention_ms),
                max_inline_bytes=s.dlq_max_inline_bytes,
            ),
        )
        gate.run(stop)

    return work


def start_outbox_tasks(
    engine: Engine, stop: threading.Event, tracing: Tracing | None = None
) -> list[Supervisor]:
    """What follows the event store's log to the outside: score-events and webhooks
    (these only with a key for their secrets: adapters/webhook_secrets.py)."""
    tasks = [supervise("relay", relay_work(engine, tracing), stop)]
    try:
        box = SecretBox.from_settings(engine.settings)
    except SecretKeyError as exc:
        log.error("webhook dispatcher not started", error=str(exc))
        return tasks
    tasks.append(supervise("webhooks", dispatcher_work(engine, box, tracing), stop))
    return tasks


def run_relay(engine: Engine) -> None:
    """The outbox tasks in a process of their own (`leadscore relay`), until SIGTERM/SIGINT:
    on a small machine a worker with `LEADSCORE_WORKER_RELAY=0` keeps its GIL for batches."""
    import signal

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    tracing = Tracing.from_settings(engine.settings)
    tasks = start_outbox_tasks(engine, stop, tracing)
    s = engine.settings
    if s.metrics_port:

        def ready() -> tuple[bool, dict[str, Any]]:
            report = health(tasks, {"role": "relay"})
            return report["ready"] and not stop.is_set(), report

        serve_metrics(
            s.metrics_port,
            lambda: health(tasks, {"role": "relay"}),
            s.metrics_host,
            {"/healthz": lambda: (True, {"live": True}), "/readyz": ready},
        )
    settle_gc()
    stop.wait()
    deadline = ShutdownDeadline(s.shutdown_timeout_s)
    deadline.start()
    for task in tasks:
        task.join(max(0.1, deadline.remaining(10.0) - 1.0))
    tracing.shutdown()
    deadline.cancel()
