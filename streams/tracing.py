"""OpenTelemetry traces from a lead-event to its score-event, its webhooks and its letters.

A lead-event's W3C ``traceparent`` Kafka header (or a new root, without one) is the
parent of a ``leadscore.lead_event`` span, linked to the span of the batch it came in
(``leadscore.batch``, with ``decode``, ``apply``, ``score`` and ``store`` under it).
That span's context must reach the relay, another process that publishes the score
later: it is kept in the side table ``trace_contexts``, keyed by the lead-event's id,
which every LeadScored names as ``caused_by_event_id``. A side table rather than a field
on LeadScored: a trace context is about how the event travelled, not about the lead, so
the domain and the stored events stay as they were (old events need no default), and
nothing is written at all while tracing is off. The row is written before the batch's
events, so the relay never sees a score whose context is still to come. The relay's
``leadscore.publish`` span is its child and its ``traceparent`` goes in the score-events'
Kafka headers; webhook POSTs carry the context of their score the same way. Dead letters
keep the lead-event's own headers, ``traceparent`` included.

Off by default (``LEADSCORE_OTEL_EXPORTER=none``): no provider, no spans, no rows; each
batch then pays one attribute test (see README, "Traces", for the measurement).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import structlog
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Link, Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from adapters.eventstore import ddl_lock

log = structlog.get_logger(__name__)

TRACEPARENT = "traceparent"
EXPORTERS = ("none", "otlp", "console")
# Rows of trace_contexts older than this are deleted by the writer (a webhook retried
# for longer is still delivered, without its trace).
RETENTION_S = 86_400
_PRUNE_EVERY_S = 600.0
_PROPAGATOR = TraceContextTextMapPropagator()

TRACE_CONTEXTS_DDL = """
CREATE TABLE IF NOT EXISTS trace_contexts (
    event_id text PRIMARY KEY,
    traceparent text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS trace_contexts_created_at ON trace_contexts (created_at);
"""


class Tracing:
    """The tracer of one process, or none (``enabled`` False: callers do nothing)."""

    def __init__(self, provider: TracerProvider | None) -> None:
        self.provider = provider
        self.enabled = provider is not None
        self.tracer = provider.get_tracer("leadscore") if provider is not None else None

    @classmethod
    def from_settings(cls, settings: Any, exporter: SpanExporter | None = None) -> Tracing:
        """``exporter`` (a test's InMemorySpanExporter) wins over the settings' choice."""
        kind = settings.otel_exporter.strip().lower()
        if kind not in EXPORTERS:
            raise ValueError(f"LEADSCORE_OTEL_EXPORTER must be one of {EXPORTERS}, not {kind!r}")
        if exporter is None and kind == "none":
            return cls(None)
        provider = TracerProvider(
            resource=Resource.create({"service.name": settings.otel_service_name})
        )
        if exporter is not None:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        elif kind == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otel_endpoint or None))
            )
        return cls(provider)

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()

    @contextmanager
    def span(
        self,
        name: str,
        *,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        links: Sequence[Link] = (),
        attributes: Mapping[str, Any] | None = None,
    ) -> Iterator[Span | None]:
        """A span made current for the block; nothing at all while tracing is off."""
        if self.tracer is None:
            yield None
            return
        with self.tracer.start_as_current_span(
            name, context=context, kind=kind, links=links, attributes=attributes
        ) as span:
            yield span

    def start_span(
        self,
        name: str,
        *,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        links: Sequence[Link] = (),
        start_time: int | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> Span:
        assert self.tracer is not None, "tracing is off"
        return self.tracer.start_span(
            name,
            context=context,
            kind=kind,
            links=links,
            start_time=start_time,
            attributes=attributes,
        )


def extract(headers: Iterable[tuple[str, bytes]]) -> Context | None:
    """The context of a message's ``traceparent`` header; None without a valid one."""
    for key, value in headers:
        if key.lower() == TRACEPARENT:
            try:
                text = value.decode("ascii")
            except UnicodeDecodeError:
                return None
            return context_of(text)
    return None


def context_of(traceparent: str | None) -> Context | None:
    if not traceparent:
        return None
    ctx = _PROPAGATOR.extract({TRACEPARENT: traceparent})
    if not trace.get_current_span(ctx).get_span_context().is_valid:
        return None
    return ctx


def traceparent_of(span: Span) -> str:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier[TRACEPARENT]


class TracedScorer:
    """A scorer whose ``predict`` is a ``score`` span under the current one."""

    def __init__(self, scorer: Any, tracing: Tracing) -> None:
        self._scorer = scorer
        self._tracing = tracing

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scorer, name)

    def predict(self, rows: Sequence[Sequence[float]]) -> Sequence[float]:
        with self._tracing.span(
            "score",
            attributes={"leadscore.model_version": str(self._scorer.version), "rows": len(rows)},
        ):
            return self._scorer.predict(rows)


class TracedModels:
    """The processor's Models for one batch, handing out TracedScorers (one per model)."""

    def __init__(self, models: Any, tracing: Tracing) -> None:
        self._models = models
        self._tracing = tracing
        self._wrapped: dict[int, TracedScorer] = {}

    def _wrap(self, scorer: Any) -> Any:
        if scorer is None:
            return None
        wrapped = self._wrapped.get(id(scorer))
        if wrapped is None:
            wrapped = self._wrapped[id(scorer)] = TracedScorer(scorer, self._tracing)
        return wrapped

    @property
    def global_model(self) -> Any:
        return self._wrap(self._models.global_model)

    def __call__(self, org_id: str) -> Any:
        return self._wrap(self._models(org_id))

    def shadow(self, org_id: str) -> Any:
        return self._wrap(self._models.shadow(org_id))

    def refresh(self, force: bool = False) -> None:
        self._models.refresh(force)


class TraceContexts:
    """The side table ``trace_contexts``: lead-event id -> the traceparent its score
    continues. Its DDL, writes and reads are all here."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._pruned_at = 0.0

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            with ddl_lock(self.dsn), psycopg.connect(self.dsn, autocommit=True) as conn:
                conn.execute(TRACE_CONTEXTS_DDL)
            self._conn = psycopg.connect(self.dsn, autocommit=True)
        return self._conn

    def put(self, contexts: Mapping[str, str]) -> None:
        """Keep ``{lead-event id: traceparent}``; a redelivered event keeps its first."""
        if not contexts:
            return
        with self._lock:
            conn = self._connection()
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO trace_contexts (event_id, traceparent) VALUES (%s, %s) "
                    "ON CONFLICT (event_id) DO NOTHING",
                    list(contexts.items()),
                )
            if time.monotonic() - self._pruned_at > _PRUNE_EVERY_S:
                self._pruned_at = time.monotonic()
                conn.execute(
                    "DELETE FROM trace_contexts WHERE created_at < now() - make_interval("
                    "secs => %s)",
                    (RETENTION_S,),
                )

    def get(self, event_ids: Iterable[str]) -> dict[str, str]:
        ids = sorted({str(i) for i in event_ids if i})
        if not ids:
            return {}
        with self._lock:
            rows = (
                self._connection()
                .execute(
                    "SELECT event_id, traceparent FROM trace_contexts WHERE event_id = ANY(%s)",
                    (ids,),
                )
                .fetchall()
            )
        return {str(r[0]): str(r[1]) for r in rows}

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
