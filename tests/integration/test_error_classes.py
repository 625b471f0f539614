"""Which failures dead-letter and which pause the batch (streams/errors.py), on real services.

Each transient class is provoked for real: a read-only database (SQLSTATE 25006, as after
a failover), a schema registry on a dead port, a promoted model whose files this worker
lacks, and a failure that hits most of a batch. None may dead-letter a good event; each
raises a TransientError and the same batch stores once the cause is gone.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from adapters.eventstore import open_store
from adapters.model_registry import ModelRegistry
from adapters.settings import Settings
from domain.events import ActivityKind
from streams.bootstrap import Engine, bootstrap
from streams.codec import ValidationError, event_to_record
from streams.dlq import RawMessage
from streams.errors import (
    BadEventError,
    DatabaseUnavailableError,
    MassFailureError,
    ModelUnavailableError,
    RegistryDownError,
    TransientError,
    classify,
)
from streams.processor import BatchProcessor
from streams.wire import (
    LEAD_EVENT_SCHEMA,
    AvroTopic,
    RegistryUnavailableError,
    SchemaCatalog,
    SerializationError,
    UnknownSchemaError,
)
from tests.support.factories import FixedScorer, activity, created
from tests.support.net import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def batch(engine: Engine, settings: Settings, n: int = 6, tag: str = "a") -> list[RawMessage]:
    enc = AvroTopic(engine.catalog, settings.topic_lead_events, LEAD_EVENT_SCHEMA)
    events = [created(lead=f"{tag}-{i}") for i in range(n)]
    return [
        RawMessage(enc.encode(event_to_record(ev)), key=ev.lead_id.encode(), offset=i)
        for i, ev in enumerate(events)
    ]


def stored_events(settings: Settings) -> int:
    """Domain events in the event store (one per applied lead-event, one per score)."""
    store = open_store(settings.pg_dsn, cache_size=0)
    try:
        return len(list(store.all_notifications()))
    finally:
        store.close()


def dbname(settings: Settings) -> str:
    return settings.pg_dsn.rsplit("/", 1)[1]


def set_read_only(settings: Settings, on: bool) -> None:
    """What a failover to a replica looks like to the engine: its sessions end, new ones
    cannot write (default_transaction_read_only, SQLSTATE 25006 on the first write)."""
    name = dbname(settings)
    # The switch back needs a session of its own that may write.
    writable = "-c default_transaction_read_only=off"
    with psycopg.connect(settings.pg_dsn, autocommit=True, options=writable) as conn:
        conn.execute(
            f'ALTER DATABASE "{name}" SET default_transaction_read_only = '
            + ("on" if on else "off")
        )
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    e = bootstrap(settings, scorer=FixedScorer())
    yield e
    e.close()


def process_transient(processor: BatchProcessor, messages: list[RawMessage]) -> TransientError:
    with pytest.raises(TransientError) as info:
        processor.process(messages)
    return info.value


def test_a_read_only_database_pauses_the_batch_and_dead_letters_nothing(
    settings: Settings, engine: Engine
) -> None:
    messages = batch(engine, settings)
    engine.processor.process(batch(engine, settings, 1, tag="warm"))  # tables exist
    before = stored_events(settings)
    set_read_only(settings, True)
    try:
        states: list[str | None] = []
        for _ in range(30):  # the pool's ended sessions first (57P01), then 25006
            err = process_transient(engine.processor, messages)
            chain = [err, err.__cause__, getattr(err.__cause__, "__cause__", None)]
            states += [getattr(e, "sqlstate", None) for e in chain if e is not None]
            if "25006" in states:
                break
        assert "25006" in states, states
        assert isinstance(err, DatabaseUnavailableError)
        assert engine.processor.totals.dead_lettered == 0
    finally:
        set_read_only(settings, False)
    # Writable again: the same batch is retried and stored, nothing dead-lettered.
    for _ in range(30):
        try:
            stats = engine.processor.process(messages)
            break
        except TransientError:
            continue  # the sessions the switch back ended
    assert (stats.applied, stats.dead_lettered) == (6, 0)
    assert stored_events(settings) > before


def test_a_registry_on_a_dead_port_pauses_the_batch(settings: Settings, engine: Engine) -> None:
    messages = batch(engine, settings)
    dead = SchemaCatalog(f"http://127.0.0.1:{free_port()}")  # knows no schema id yet
    processor = BatchProcessor(engine.store, dead, FixedScorer())
    err = process_transient(processor, messages)
    assert isinstance(err, RegistryDownError)
    assert isinstance(err.__cause__, RegistryUnavailableError)
    assert processor.totals.dead_lettered == 0
    # The registry back: the same batch stores.
    stats = BatchProcessor(engine.store, engine.catalog, FixedScorer()).process(messages)
    assert (stats.applied, stats.dead_lettered) == (6, 0)


def test_a_promoted_model_without_files_pauses_the_batch(
    settings: Settings, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(ROOT / "models" / "onnx" / "v1", models / "v1")
    s = dataclasses.replace(settings, model_dir=str(models), model_version="v1", model_refresh_s=0)
    engine = bootstrap(s)
    try:
        messages = batch(engine, s)
        # Another worker trained and promoted v2; this one never got its files.
        shutil.copytree(models / "v1", models / "v2")
        meta = (models / "v2" / "metadata.json").read_text()
        (models / "v2" / "metadata.json").write_text(meta.replace('"v1"', '"v2"'))
        registry = ModelRegistry(s.pg_dsn, models)
        assert registry.sync() == ["v2"]
        registry.promote("v2")
        # Neither here nor in the shared store (adapters/model_artifacts.py).
        with psycopg.connect(s.pg_dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM model_artifacts WHERE version = 'v2'")
        shutil.rmtree(models / "v2")
        err = process_transient(engine.processor, messages)
        assert isinstance(err, ModelUnavailableError)
        assert engine.processor.totals.dead_lettered == 0
        assert stored_events(s) == 0
        # The files arrive: the same batch stores, scored by v2.
        shutil.copytree(models / "v1", models / "v2")
        (models / "v2" / "metadata.json").write_text(meta.replace('"v1"', '"v2"'))
        stats = engine.processor.process(messages)
        assert (stats.applied, stats.dead_lettered) == (6, 0)
    finally:
        engine.close()


class BrokenScorer(FixedScorer):
    """A model that fails on every row: a failure of the engine, not of the events."""

    def predict(self, rows):  # type: ignore[no-untyped-def]
        raise RuntimeError("model session is broken")


def test_a_failure_of_most_of_a_batch_pauses_it(settings: Settings) -> None:
    engine = bootstrap(settings, scorer=BrokenScorer())
    try:
        messages = batch(engine, settings)
        err = process_transient(engine.processor, messages)
        assert isinstance(err, MassFailureError)
        assert "6 of 6" in str(err)
        assert engine.processor.totals.dead_lettered == 0
        assert stored_events(settings) == 0
    finally:
        engine.close()


class PoisonScorer(FixedScorer):
    def predict(self, rows):  # type: ignore[no-untyped-def]
        demo = self.feature_names.index("n_demo_request")
        if any(row[demo] >= 5 for row in rows):
            raise RuntimeError("model refuses this row")
        return super().predict(rows)


def test_one_event_that_fails_alone_is_still_a_dead_letter(settings: Settings) -> None:
    engine = bootstrap(settings, scorer=PoisonScorer())
    try:
        enc = AvroTopic(engine.catalog, settings.topic_lead_events, LEAD_EVENT_SCHEMA)
        events = [created(lead=f"ok-{i}") for i in range(4)] + [created(lead="p")]
        events += [activity(ActivityKind.DEMO_REQUEST, lead="p") for _ in range(5)]
        messages = [
            RawMessage(enc.encode(event_to_record(ev)), key=ev.lead_id.encode(), offset=i)
            for i, ev in enumerate(events)
        ]
        stats = engine.processor.process(messages)
        assert (stats.applied, stats.failed, stats.dead_lettered) == (9, 1, 1)
    finally:
        engine.close()


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ValidationError("title has a NUL"), "bad_event"),
        (SerializationError("unknown magic byte 7"), "bad_event"),
        (UnknownSchemaError("unknown schema id 99"), "bad_event"),
        (BadEventError("org not allowed"), "bad_event"),
        (RuntimeError("a bug this one event provokes"), "bad_event"),
        (RegistryUnavailableError("connection refused"), "transient"),
        (psycopg.errors.ReadOnlySqlTransaction("read-only"), "transient"),
        (psycopg.OperationalError("server closed the connection"), "transient"),
        (ConnectionError("reset"), "transient"),
        (TimeoutError("slow"), "transient"),
        (MassFailureError("6 of 6"), "transient"),
        (psycopg.errors.CharacterNotInRepertoire("0x00"), "bad_event"),
    ],
)
def test_classify(exc: BaseException, kind: str) -> None:
    assert classify(exc) == kind
