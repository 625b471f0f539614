"""One lead-event's trace across two real processes, exported over OTLP/HTTP.

A worker (no relay of its own) and `leadscore relay` run as separate processes with
``LEADSCORE_OTEL_EXPORTER=otlp``, each exporting to a collector this test serves (OTLP's
protobuf over HTTP, decoded with opentelemetry-proto). What links the two processes is
only what links them in production: the ``trace_contexts`` row and Kafka headers.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from adapters.settings import Settings, settings_env
from devtools.engine_processes import stop_worker, wait_for_group
from streams.codec import event_to_record
from streams.relay import kafka_producer
from streams.tracing import TRACEPARENT
from streams.wire import LEAD_EVENT_SCHEMA, AvroTopic, SchemaCatalog
from tests.support.factories import created
from tests.support.net import free_port, http_server
from tests.support.pipeline import consume_all
from tests.support.worker import start, wait_for_events

pytestmark = pytest.mark.e2e

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str


@dataclass
class Collector:
    port: int
    spans: list[Span] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def of(self, service: str, name: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.service == service and s.name == name]


def decode(body: bytes) -> list[Span]:
    request = ExportTraceServiceRequest.FromString(body)
    out: list[Span] = []
    for resource_spans in request.resource_spans:
        attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                out.append(
                    Span(
                        service=attrs.get("service.name", ""),
                        name=s.name,
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex(),
                    )
                )
    return out


@pytest.fixture
def collector() -> Iterator[Collector]:
    state = Collector(port=free_port())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            spans = decode(body) if self.path == "/v1/traces" else []
            with state.lock:
                state.spans += spans
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    with http_server(Handler, state.port):
        yield state


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_lead_events_trace_spans_the_worker_and_relay_processes(
    settings: Settings, collector: Collector, tmp_path: Path
) -> None:
    s = dataclasses.replace(
        settings,
        metrics_port=free_port(),
        worker_relay=False,
        worker_projections="",
        otel_exporter="otlp",
        otel_endpoint=f"http://127.0.0.1:{collector.port}/v1/traces",
        otel_service_name="leadscore-worker",
    )
    event = created(lead="traced-across")
    encoder = AvroTopic(SchemaCatalog.from_settings(s), s.topic_lead_events, LEAD_EVENT_SCHEMA)
    producer = kafka_producer(s.kafka)
    producer.produce(
        s.topic_lead_events,
        key=event.lead_id.encode(),
        value=encoder.encode(event_to_record(event)),
        headers=[(TRACEPARENT, f"00-{TRACE_ID}-{PARENT_ID}-01".encode())],
    )
    assert producer.flush(30) == 0

    worker = start(s, tmp_path / "worker.log")
    relay = None
    try:
        wait_for_group(s, worker, timeout=120)
        wait_for_events(s.metrics_port, "applied", 1, 60, "the worker to apply the lead-event")
        relay_settings = dataclasses.replace(s, metrics_port=0, otel_service_name="leadscore-relay")
        with (tmp_path / "relay.log").open("ab") as out:
            relay = subprocess.Popen(
                [sys.executable, "-m", "leadscore.cli", "relay"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **settings_env(relay_settings)},
                start_new_session=True,
            )
        [(_key, value)] = consume_all(s, expected=1, timeout=60)
        assert value
        # Each process exports in batches (every few seconds, and at exit).
        wait_for(
            lambda: (
                collector.of("leadscore-worker", "leadscore.lead_event")
                and collector.of("leadscore-relay", "publish")
            ),
            60,
            "both processes' spans at the collector",
        )
    finally:
        stop_worker(worker)
        if relay is not None:
            stop_worker(relay)

    [lead_event] = collector.of("leadscore-worker", "leadscore.lead_event")
    # The worker continued the producer's trace: same trace, the producer's span its parent.
    assert (lead_event.trace_id, lead_event.parent_id) == (TRACE_ID, PARENT_ID)
    for stage in ("decode", "apply", "score", "store"):
        assert collector.of("leadscore-worker", stage), f"the worker exported no {stage} span"
    # The relay, another process, published the score-event as a child of that span.
    [publish] = collector.of("leadscore-relay", "publish")
    assert publish.trace_id == TRACE_ID
    assert publish.parent_id == lead_event.span_id
