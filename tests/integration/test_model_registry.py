"""The model registry on PostgreSQL: statuses, per-org models, shadows and promotion."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.eventstore import SCORED_TOPIC
from adapters.model_registry import ModelRegistry, ModelRegistryError, shadow_report
from adapters.settings import Settings
from domain.events import ActivityKind, EventType, LeadEvent
from streams.bootstrap import Engine, bootstrap
from tests.support.factories import T0, activity, created, next_id
from tests.support.models import copy_model
from tests.support.pipeline import consume_all, encoded
from tests.support.readmodels import project

pytestmark = pytest.mark.integration


@pytest.fixture
def models(settings: Settings, tmp_path: Path) -> Settings:
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    copy_model(model_dir, "v1")
    copy_model(model_dir, "v2")
    copy_model(model_dir, "v1-org2", org="org-2")
    return dataclasses.replace(
        settings, model_dir=str(model_dir), model_version="v1", model_refresh_s=0.0
    )


@pytest.fixture
def engine(models: Settings) -> Iterator[Engine]:
    e = bootstrap(models)
    yield e
    e.close()


def statuses(registry: ModelRegistry) -> dict[str, tuple[str, str]]:
    return {m["version"]: (m["scope"], m["status"]) for m in registry.list()}


def scored_versions(engine: Engine) -> Counter[tuple[str, str]]:
    return Counter(
        (ev.org_id, ev.model_version)
        for note in engine.store.all_notifications([SCORED_TOPIC])
        for ev in [engine.store.to_event(note)]
    )


def test_the_registry_registers_the_disk_and_moves_versions_between_statuses(
    models: Settings,
) -> None:
    registry = ModelRegistry(models.pg_dsn, Path(models.model_dir))
    assert sorted(registry.sync(preferred="v1")) == ["v1", "v1-org2", "v2"]
    assert registry.sync() == []  # idempotent
    assert statuses(registry) == {
        "v1": ("global", "active"),
        "v2": ("global", "registered"),
        "v1-org2": ("org-2", "registered"),
    }
    registry.shadow("v2")
    assert statuses(registry)["v2"] == ("global", "shadow")
    registry.promote("v2")  # the shadow becomes active, v1 steps back
    assert statuses(registry)["v1"] == ("global", "registered")
    assert statuses(registry)["v2"] == ("global", "active")
    with pytest.raises(ModelRegistryError, match="promote another version first"):
        registry.retire("v2")
    with pytest.raises(ModelRegistryError, match="no model 'v9'"):
        registry.promote("v9")
    registry.retire("v1")
    assert statuses(registry)["v1"] == ("global", "retired")
    assert registry.assignments()["global"].active == "v2"


def test_an_org_with_its_own_model_is_scored_by_it(engine: Engine, models: Settings) -> None:
    ModelRegistry(models.pg_dsn, Path(models.model_dir)).promote("v1-org2")
    events = [created(lead="a", org="org-1"), created(lead="b", org="org-2")]
    engine.processor.process(encoded(engine, events))
    assert scored_versions(engine) == {("org-1", "v1"): 1, ("org-2", "v1-org2"): 1}


def test_a_shadow_model_scores_beside_the_active_one_and_never_publishes(
    engine: Engine, models: Settings
) -> None:
    ModelRegistry(models.pg_dsn, Path(models.model_dir)).shadow("v2")
    events = [created(lead=f"l{i}") for i in range(20)]
    events += [activity(ActivityKind.DEMO_REQUEST, lead=f"l{i}") for i in range(10)]
    engine.processor.process(encoded(engine, events[:20]))
    engine.processor.process(encoded(engine, events[20:]))

    assert scored_versions(engine) == {("org-1", "v1"): 30}
    with engine.relay() as relay:
        assert relay.publish_once() == 30
    published = [engine.catalog.decode(v) for _k, v in consume_all(models, expected=30)]
    assert published and {r["model_version"] for r in published} == {"v1"}

    report = shadow_report(models.pg_dsn, "v2")
    # v2 is v1 under another name: the same leads, the same scores.
    assert report["leads"] == 20 and report["active"] == ["v1"]
    assert report["mean_abs_diff"] == 0.0 and report["within_5_points"] == 1.0
    assert report["top_decile_overlap"] == 1.0


def test_a_promotion_reaches_a_running_processor_between_batches(
    engine: Engine, models: Settings
) -> None:
    engine.processor.process(encoded(engine, [created(lead="a")]))
    ModelRegistry(models.pg_dsn, Path(models.model_dir)).promote("v2")
    engine.processor.process(encoded(engine, [activity(lead="a")]))
    engine.processor.process(encoded(engine, [created(lead="b")]))
    assert scored_versions(engine) == {("org-1", "v1"): 1, ("org-1", "v2"): 2}
    assert engine.scorer.version == "v2"


def test_the_shadow_report_measures_lift_where_outcomes_are_known(
    engine: Engine, models: Settings
) -> None:
    ModelRegistry(models.pg_dsn, Path(models.model_dir)).shadow("v2")
    events: list[LeadEvent] = []
    for i in range(40):
        events.append(created(lead=f"l{i}", title="VP Sales" if i % 2 else "Intern"))
        if i % 2:
            events.append(activity(ActivityKind.DEMO_REQUEST, lead=f"l{i}"))
        outcome = EventType.LEAD_CONVERTED if i % 2 else EventType.LEAD_DISQUALIFIED
        events.append(LeadEvent(next_id(), outcome, "org-1", f"l{i}", T0))
    engine.processor.process(encoded(engine, events))
    asyncio.run(project(models))
    report = shadow_report(models.pg_dsn, "v2")
    assert report["with_outcome"] == 40
    assert report["active_auc"] == report["shadow_auc"] > 0.5
    assert report["active_lift"] == report["shadow_lift"] > 1.0


def test_the_rules_versions_in_use_are_kept_in_the_registry(
    models: Settings, tmp_path: Path
) -> None:
    import psycopg

    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "org-1.yaml").write_text("version: 4\nthresholds: {mql: 30}\n")
    (rules / "default.yaml").write_text("version: base-1\n")
    bootstrap(dataclasses.replace(models, scoring_config_dir=str(rules))).close()
    (rules / "org-1.yaml").write_text("version: 5\nthresholds: {mql: 35}\n")
    bootstrap(dataclasses.replace(models, scoring_config_dir=str(rules))).close()
    with psycopg.connect(models.pg_dsn) as conn:
        kept = conn.execute(
            "SELECT org_id, version, document FROM scoring_rules ORDER BY org_id, version"
        ).fetchall()
    assert kept == [
        ("default", "base-1", "version: base-1\n"),
        ("org-1", "4", "version: 4\nthresholds: {mql: 30}\n"),
        ("org-1", "5", "version: 5\nthresholds: {mql: 35}\n"),
    ]
