"""A model version is a shared artifact: trained on one machine, loaded on another.

Two model directories stand for two machines sharing one PostgreSQL. A model trained into
the first is registered and shared by its sync; a router (and a real worker process) on
the second loads the promoted version it never had, checked against its digest, and a
cached copy that differs from the shared one is replaced.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import psycopg
import pytest

from adapters.eventstore import open_store
from adapters.model_artifacts import ArtifactError, digest
from adapters.model_registry import ModelRegistry, ModelRouter
from adapters.modelstore import load_scorer
from adapters.settings import ROOT, Settings
from devtools.engine_processes import stop_worker, wait_for_group
from devtools.world_custom import custom_world
from domain.featurespec import parse
from domain.lead import lead_aggregate_id
from leadscore.training import train
from streams.producer import lead_event_encoder, produce_events
from streams.relay import kafka_producer
from streams.wire import SchemaCatalog
from tests.support.worker import start, wait_until

pytestmark = pytest.mark.integration

ORG = "org-custom"
SPEC = {
    "version": 1,
    "fields": [{"attribute": "occupation"}, {"attribute": "lead_origin"}],
    "activities": [{"kind": "page_view", "property": "seconds_on_site", "stats": ["sum"]}],
}


@pytest.fixture
def machines(settings: Settings, tmp_path: Path) -> tuple[Path, Path]:
    """Machine A trained "own-1" for ORG; machine B has only the committed v1."""
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        shutil.copytree(ROOT / "models" / "onnx" / "v1", d / "v1")
    world = custom_world(org_id=ORG, leads=800, seed=5)
    train(world.events, version="own-1", out_dir=a, spec=parse(SPEC), num_trees=20,
          provenance={"source": "event store", "org": ORG})  # fmt: skip
    ModelRegistry(settings.pg_dsn, a).sync(preferred="v1")
    ModelRegistry(settings.pg_dsn, a).promote("own-1")
    return a, b


def test_a_router_on_another_machine_loads_the_promoted_version(
    settings: Settings, machines: tuple[Path, Path]
) -> None:
    a, b = machines
    assert not (b / "own-1").exists()
    router = ModelRouter(ModelRegistry(settings.pg_dsn, b))
    scorer = router(ORG)
    assert scorer.version == "own-1" and (b / "own-1" / "model.onnx").exists()
    rows = np.zeros((3, len(scorer.feature_names)), dtype=np.float32)
    assert np.allclose(scorer.predict(rows), load_scorer(a, "own-1").predict(rows))
    assert scorer.spec.vocabularies == load_scorer(a, "own-1").spec.vocabularies  # type: ignore[attr-defined]


def test_a_cached_copy_that_differs_is_replaced_and_a_bad_store_refused(
    settings: Settings, machines: tuple[Path, Path]
) -> None:
    a, b = machines
    registry = ModelRegistry(settings.pg_dsn, b)
    registry.artifacts.ensure_local("own-1")
    (b / "own-1" / "model.onnx").write_bytes(b"tampered")
    registry.artifacts.ensure_local("own-1")
    assert (b / "own-1" / "model.onnx").read_bytes() == (a / "own-1" / "model.onnx").read_bytes()
    onnx = (a / "own-1" / "model.onnx").read_bytes()
    meta = (a / "own-1" / "metadata.json").read_bytes()
    with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
        (sha,) = conn.execute(
            "SELECT sha256 FROM model_artifacts WHERE version = 'own-1'"
        ).fetchone()  # type: ignore[misc]
        assert sha == digest(onnx, meta)
        conn.execute("UPDATE model_artifacts SET onnx = 'corrupt'::bytea WHERE version = 'own-1'")
    shutil.rmtree(b / "own-1")
    with pytest.raises(ArtifactError, match="do not match their digest"):
        registry.artifacts.ensure_local("own-1")
    assert not (b / "own-1").exists()  # nothing half-written


def test_a_worker_on_another_machine_scores_with_the_shared_model(
    settings: Settings, machines: tuple[Path, Path], tmp_path: Path
) -> None:
    _a, b = machines
    s = dataclasses.replace(settings, model_dir=str(b), model_version="v1")
    worker = start(s, tmp_path / "worker.log")
    try:
        wait_for_group(s, worker, timeout=120)
        events = custom_world(org_id=ORG, leads=20, seed=9).events
        encoder = lead_event_encoder(SchemaCatalog.from_settings(s), s.topic_lead_events)
        report = produce_events(kafka_producer(s.kafka), s.topic_lead_events, encoder, events)
        assert report.sent == len(events)

        def scored_by_own() -> bool:
            store = open_store(s.pg_dsn, cache_size=0)
            try:
                leads = store.load({lead_aggregate_id(ORG, e.lead_id) for e in events})
            finally:
                store.close()
            return all(
                lead is not None and lead.model_version == "own-1" for lead in leads.values()
            )

        wait_until(scored_by_own, 120, "every lead scored by own-1 on machine B")
        assert (b / "own-1" / "metadata.json").exists()
    finally:
        stop_worker(worker)
