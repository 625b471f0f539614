"""streams/consumer.py: Faust's consumer loop with a direct delivery when nothing can block."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import faust
from confluent_kafka import Producer
from faust.transport.consumer import Consumer as FaustConsumer

from adapters.settings import Settings, settings_env
from streams.consumer import (
    AdaptiveFetch,
    Consumer,
    ConsumerThread,
    Transport,
    use_direct_delivery,
)
from streams.worker import faust_app
from tests.support.probes import jsonl, source_sha256

# sha256 of faust-streaming 0.15.3's Consumer._drain_messages, which streams/consumer.py
# copies with one change. A new Faust changes it: compare the two loops, carry over what
# changed, then update this.
FAUST_DRAIN_SHA256 = "44a2500309e83c630493f6828af50166ec8d96a0b3e4fb2bab735f704ae93417"


def test_the_copied_loop_is_fausts_of_the_pinned_version() -> None:
    assert source_sha256(FaustConsumer._drain_messages) == FAUST_DRAIN_SHA256, (
        "faust-streaming's Consumer._drain_messages changed: re-read streams/consumer.py"
    )


def _seen(out: Path) -> list[dict[str, object]]:
    return jsonl(out / "seen.jsonl")


def test_a_slow_agent_gets_every_message_once_in_order_by_both_paths(
    settings: Settings, tmp_path: Path
) -> None:
    n = 600
    producer = Producer(
        {
            **settings.kafka,
        }
    )
    for i in range(n):
        producer.produce(settings.topic_lead_events, key=f"k{i % 17}", value=str(i))
    assert producer.flush(30) == 0

    env = {
        **os.environ,
        **settings_env(settings),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    with (tmp_path / "probe.log").open("wb") as log:
        probe = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.integration.faust_probe",
                settings.topic_lead_events,
                settings.consumer_group,
                str(tmp_path),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while len(_seen(tmp_path)) < n and time.monotonic() < deadline:
            assert probe.poll() is None, (tmp_path / "probe.log").read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(1.0)  # anything beyond n would be a duplicate
        seen = _seen(tmp_path)
        deliveries = json.loads((tmp_path / "deliveries.json").read_text())
    finally:
        os.killpg(probe.pid, signal.SIGTERM)
        probe.wait(timeout=60)

    assert sorted(int(str(r["v"])) for r in seen) == list(range(n))  # each once
    by_partition: dict[object, list[int]] = {}
    for r in seen:
        by_partition.setdefault(r["p"], []).append(int(str(r["o"])))
    for offsets in by_partition.values():
        assert offsets == sorted(offsets)
    # The first batch slept with the buffer full: some deliveries had to be guarded,
    # and once the agent kept up the rest went directly.
    assert deliveries["guarded"] > 0 and deliveries["direct"] > 0
    assert deliveries["guarded"] + deliveries["direct"] == n


async def test_the_kafka_consumer_fetches_with_the_transports_settings(
    services: Settings, tmp_path: Path
) -> None:
    """Faust passes aiokafka no fetch_min_bytes; ours does, to the fetcher of a consumer
    started on the test broker."""
    app = faust_app("probe-fetch", services.kafka, tmp_path)
    use_direct_delivery(app, fetch_min_bytes=4096, fetch_max_wait_ms=7)
    thread = app.consumer._thread
    assert isinstance(thread, ConsumerThread)
    kafka = thread._create_worker_consumer(app.transport)
    await kafka.start()
    try:
        fetcher = kafka._fetcher
        assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (4096, 7)
    finally:
        await kafka.stop()
        thread.thread_loop.close()
    default = faust_app("probe-fetch-default", services.kafka, tmp_path)
    use_direct_delivery(default)
    assert (default.transport.fetch_min_bytes, default.transport.fetch_max_wait_ms) == (1, 1500)
    default.consumer._thread.thread_loop.close()


async def test_fetches_wait_for_a_byte_when_idle_and_for_a_batch_when_busy(
    settings: Settings, tmp_path: Path
) -> None:
    """On the test broker: empty fetches make the fetcher idle (one byte, a long wait);
    the fetch that brings a record makes it busy again (a batch, a short wait)."""
    from aiokafka import TopicPartition

    app = faust_app("probe-adaptive", settings.kafka, tmp_path)
    use_direct_delivery(app, fetch_min_bytes=4096, fetch_max_wait_ms=20, fetch_idle_wait_ms=400)
    thread = app.consumer._thread
    kafka = thread._create_worker_consumer(app.transport)
    await kafka.start()
    try:
        tp = TopicPartition(settings.topic_lead_events, 0)
        kafka.assign([tp])
        await kafka.seek_to_end(tp)
        adaptive = AdaptiveFetch(kafka._fetcher, idle_wait_ms=400, idle_after=3)
        adaptive.install()
        fetcher = kafka._fetcher
        assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (4096, 20)
        deadline = time.monotonic() + 20
        while not adaptive.is_idle and time.monotonic() < deadline:
            assert await kafka.getmany(tp, timeout_ms=100) == {}
        assert adaptive.is_idle
        assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (1, 400)

        producer = Producer(dict(settings.kafka))
        producer.produce(settings.topic_lead_events, b"wake", partition=0)
        assert producer.flush(10) == 0
        got: list[object] = []
        deadline = time.monotonic() + 20
        while not got and time.monotonic() < deadline:
            got += (await kafka.getmany(tp, timeout_ms=500)).get(tp, [])
        assert [m.value for m in got] == [b"wake"]  # type: ignore[attr-defined]
        assert not adaptive.is_idle
        assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (4096, 20)
    finally:
        await kafka.stop()
        thread.thread_loop.close()


async def test_no_direct_delivery_while_flow_is_suspended_or_a_buffer_is_full() -> None:
    app = faust.App(
        "probe-guard", broker="kafka://127.0.0.1:1", stream_buffer_maxsize=2, web_enabled=False
    )
    use_direct_delivery(app)
    assert isinstance(app.transport, Transport)
    topic = app.topic("guarded", value_type=bytes, partitions=1)
    consumer = app.consumer
    try:
        await _check_guards(app, topic, consumer)
    finally:
        # Never started: close the loop its consumer thread made (mode.threads).
        consumer._thread.thread_loop.close()


async def _check_guards(app: faust.App, topic: faust.TopicT, consumer: Consumer) -> None:
    assert isinstance(consumer, Consumer)
    tp = faust.types.TP("guarded", 0)
    app.topics._tp_index[tp].add(topic)

    app.flow_control.resume()
    assert consumer.can_deliver_without_waiting(tp)
    app.flow_control.suspend()
    assert not consumer.can_deliver_without_waiting(tp)
    app.flow_control.resume()

    topic.queue.put_nowait("a")
    topic.queue.put_nowait("b")
    assert topic.queue.full()
    assert not consumer.can_deliver_without_waiting(tp)
    topic.queue.get_nowait()
    assert consumer.can_deliver_without_waiting(tp)

    pending = app.producer.buffer.pending
    for i in range(app.producer.buffer.max_messages + 1):
        pending.put_nowait(i)
    assert not consumer.can_deliver_without_waiting(tp)
    while not pending.empty():
        pending.get_nowait()
    assert consumer.can_deliver_without_waiting(tp)

    consumer.suspend_flow.set()
    assert not consumer.can_deliver_without_waiting(tp)
    consumer.suspend_flow.clear()

    async with app.topics._tp_to_callback_lock:
        assert not consumer.can_deliver_without_waiting(tp)
    assert consumer.can_deliver_without_waiting(tp)
