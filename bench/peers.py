"""The stream benchmarks' peers, each run on the same broker and topic as the engine.

(a) ``faust``: what a user writes first: a plain Faust agent that decodes each
    lead-event (fastavro through the project's schema catalog, then the project's
    validation into a LeadEvent) and forwards it to another topic, one event at a time.
(a0) ``faust-take``: a Faust agent that takes the events in batches (``take_adaptive``,
    streams/batching.py, as the worker does) and does nothing with them: the ceiling of
    any pipeline built on a Faust agent on this machine, and what that machinery costs in
    CPU per event. Run twice:
    on Faust's own consumer loop, and (``faust-take-direct``) on the worker's
    (streams/consumer.py), which hands a message to the stream without four tasks.
(b) ``raw``: a confluent-kafka consume -> produce loop in Python doing nothing else: the
    Python I/O ceiling.
(c) Kafka's own ProducerPerformance and ConsumerPerformance (what kafka-producer-perf-test
    and kafka-consumer-perf-test run), from the jars `leadscore services up` fetched: the
    broker's ceiling on this machine.

(a) and (b) run as processes: ``python -m bench.peers faust|raw SRC SINK GROUP PARTITIONS``;
(a0) as ``python -m bench.peers faust-take[-direct] SRC GROUP PARTITIONS EVENTS OUT.json``.
Both copy the message headers, so the latency bench can time them too.
"""

from __future__ import annotations

import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from faust.sensors import Sensor

from adapters.settings import Settings
from bench import stack
from devtools.services import kafka as kafka_service


def _faust_app(s: Settings, group: str, **settings: Any) -> Any:
    """A Faust app on raw bytes, configured as the worker's (streams/worker.py)."""
    from streams.worker import faust_app

    return faust_app(group, s.kafka, s.run_path / "faust", **settings)


def run_faust(s: Settings, src: str, sink: str, group: str, partitions: int) -> None:
    import faust

    from streams.codec import record_to_event
    from streams.wire import SchemaCatalog
    from streams.worker import faust_worker

    catalog = SchemaCatalog.from_settings(s)
    app = _faust_app(s, group)
    source = app.topic(src, key_type=bytes, value_type=bytes, partitions=partitions)
    target = app.topic(sink, key_type=bytes, value_type=bytes, partitions=partitions)

    @app.agent(source, name="forward")
    async def forward(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            record_to_event(catalog.decode(event.value))
            await target.send(key=event.key, value=event.value, headers=list(event.headers.items()))

    faust_worker(app, "warning").execute_from_commandline()


def run_faust_take(
    s: Settings, src: str, group: str, partitions: int, events: int, out: str, *, direct: bool
) -> None:
    """(a0): consume ``events`` in batches, do nothing; write the timing as JSON to ``out``.

    The clock starts when the agent's stream takes its first event (a sensor's
    ``on_message_in``, before any batch has formed) and stops at the batch that completes
    the count, so every event is inside the span. Starting it at the first batch instead
    left that batch out, and when it held every event (1,500 events fit a batch of
    3,000) the span held none: 0 events, and the bench divided by them."""
    import json
    import os

    import faust

    from streams.batching import take_adaptive
    from streams.worker import faust_worker

    # Fetching and buffering as the worker does (streams/worker.py).
    app = _faust_app(
        s, group, broker_max_poll_records=s.batch_size, stream_buffer_maxsize=4 * s.batch_size
    )
    if direct:
        from streams.consumer import use_direct_delivery

        use_direct_delivery(app)
    source = app.topic(src, key_type=bytes, value_type=bytes, partitions=partitions)
    clock = TakeClock()
    app.sensors.add(clock)

    @app.agent(source, name="take")
    async def take(stream: faust.StreamT[bytes]) -> None:
        seen = 0
        batches = take_adaptive(
            stream, s.batch_size, quiet=s.batch_quiet_ms / 1000, max_wait=s.batch_timeout_ms / 1000
        )
        async for batch in batches:
            seen += len(batch)
            if seen >= events:
                result = clock.result(seen)
                with open(out, "w") as f:
                    json.dump(result, f)
                os._exit(0)

    faust_worker(app, "warning").execute_from_commandline()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class TakeClock(Sensor):
    """Starts when a stream takes its first event: Faust calls ``on_message_in`` for each
    event a stream takes from its channel, before the event joins a batch."""

    started: float | None = None
    cpu_started = 0.0

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        if self.started is None:
            self.started, self.cpu_started = time.perf_counter(), _cpu_seconds()

    def result(self, events: int) -> dict[str, float]:
        """The span from the first event taken to now, over ``events`` events."""
        if self.started is None:
            raise RuntimeError("no event was taken: the sensor is not on the app's streams")
        return {
            "events": events,
            "seconds": time.perf_counter() - self.started,
            "cpu_seconds": _cpu_seconds() - self.cpu_started,
        }


def run_raw(s: Settings, src: str, sink: str, group: str) -> None:
    from confluent_kafka import Consumer

    from streams.relay import kafka_producer

    consumer = Consumer(
        {
            **s.kafka,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
            "fetch.wait.max.ms": stack.FETCH_WAIT_MS,
        }
    )
    producer = kafka_producer(s.kafka)
    consumer.subscribe([src])
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    produce, poll = producer.produce, producer.poll
    while not stopping:
        # A short wait: a batch forms when messages are waiting, and a lone one is not held.
        for msg in consumer.consume(1000, timeout=0.005):
            if msg.error():
                continue
            while True:
                try:
                    produce(sink, key=msg.key(), value=msg.value(), headers=msg.headers())
                    break
                except BufferError:
                    poll(0.01)
        poll(0)
    producer.flush(30)
    consumer.close()


# -- (c) Kafka's own perf tools --------------------------------------------------


def _kafka_tool(s: Settings, cls: str, args: list[str], timeout: float) -> str:
    libs = kafka_service.layout(s).libs
    cmd = ["java", "-Xmx512m", "-cp", f"{libs}/*", cls, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
    return out.stdout


def _client_config_file(s: Settings) -> Path:
    """The engine's Kafka credentials as a Java client's properties file (run dir: 0700)."""
    path = s.run_path / "bench-kafka-client.properties"
    props = kafka_service.java_client_properties(s)
    path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    path.chmod(0o600)
    return path


def producer_perf(s: Settings, topic: str, records: int, record_size: int) -> float:
    """records/s of kafka-producer-perf-test (acks=all, lz4, like the engine's producers)."""
    out = _kafka_tool(
        s,
        "org.apache.kafka.tools.ProducerPerformance",
        [
            "--topic",
            topic,
            "--num-records",
            str(records),
            "--record-size",
            str(record_size),
            "--throughput",
            "-1",
            "--producer.config",
            str(_client_config_file(s)),
            "--producer-props",
            "acks=all",
            "compression.type=lz4",
            "linger.ms=5",
        ],  # fmt: skip
        timeout=600,
    )
    lines = [ln for ln in out.splitlines() if "records sent" in ln]
    m = re.search(r"records sent, ([\d.]+) records/sec", lines[-1])
    if m is None:
        raise RuntimeError(f"unexpected ProducerPerformance output: {out[-500:]}")
    return float(m.group(1))


def consumer_perf(s: Settings, topic: str, messages: int) -> float:
    """messages/s of kafka-consumer-perf-test over ``topic`` (fetch time, no rebalance)."""
    out = _kafka_tool(
        s,
        "org.apache.kafka.tools.ConsumerPerformance",
        ["--topic", topic, "--messages", str(messages), "--bootstrap-server", s.kafka_bootstrap,
         "--consumer.config", str(_client_config_file(s)), "--timeout", "60000"],
        timeout=600,
    )  # fmt: skip
    header, row = None, None
    for line in out.splitlines():
        if line.startswith("start.time"):
            header = [h.strip() for h in line.split(",")]
        elif header and line.strip():
            row = [v.strip() for v in line.split(",")]
    if not header or not row:
        raise RuntimeError(f"unexpected ConsumerPerformance output: {out[-500:]}")
    values = dict(zip(header, row, strict=False))
    # fetch.nMsg.sec leaves out the group join; the consumer's ceiling once it reads.
    return float(values["fetch.nMsg.sec"])


def main(argv: list[str]) -> None:
    s = Settings.from_env()
    if argv[0] in ("faust-take", "faust-take-direct"):
        kind, src, group, partitions, events, out = argv
        direct = kind == "faust-take-direct"
        run_faust_take(s, src, group, int(partitions), int(events), out, direct=direct)
        return
    kind, src, sink, group, partitions = argv
    if kind == "faust":
        run_faust(s, src, sink, group, int(partitions))
    elif kind == "raw":
        run_raw(s, src, sink, group)
    else:
        raise SystemExit(f"unknown peer {kind!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
