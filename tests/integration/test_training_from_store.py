"""Training from the event store: the stored history replays into the same labelled rows.

The engine stores a generated history (real processor, real PostgreSQL); the rows built
from the store must equal the rows built from the lead-events themselves, lead by lead,
so training from the store inherits the label policy's guarantees (prediction points
chosen without the outcome, features from events up to the point only:
tests/unit/test_training.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from adapters.eventstore import open_store
from adapters.history import lead_events
from adapters.settings import Settings
from adapters.training_rows import training_rows
from devtools.workload import generate
from domain.features import features
from leadscore.training import NotEnoughOutcomesError, train_from_store
from tests.support.factories import FixedScorer
from tests.support.pipeline import store_history

pytestmark = pytest.mark.integration


def rows_by_lead(events):  # type: ignore[no-untyped-def]
    return {
        (r.org_id, r.lead_id, r.point): (r.label, r.outcome, tuple(r.values[0]))
        for r in training_rows(events, [features])
    }


def stored(settings: Settings) -> list:  # type: ignore[type-arg]
    history = list(generate(2, 600, 9_000, seed=21))
    store_history(settings, history, FixedScorer())
    return history


def test_the_store_replays_into_the_same_labelled_rows(settings: Settings) -> None:
    history = stored(settings)
    store = open_store(settings.pg_dsn, cache_size=0)
    try:
        from_store = rows_by_lead(lead_events(store))
        one_org = list(lead_events(store, "org-002"))
    finally:
        store.close()
    expected = rows_by_lead(history)
    assert from_store == expected
    assert {label for label, *_ in expected.values()} == {0, 1}
    assert one_org and {ev.org_id for ev in one_org} == {"org-002"}


def test_train_from_store_globally_and_refuse_an_org_without_enough_conversions(
    settings: Settings, tmp_path: Path
) -> None:
    stored(settings)
    meta = train_from_store("store-v1", tmp_path, settings.pg_dsn, num_trees=20)
    assert meta.provenance == {"source": "event store", "org": "(all orgs)"}
    assert (tmp_path / "store-v1" / "model.onnx").exists()
    assert 0.5 < meta.metrics["auc"] <= 1.0
    assert np.isfinite(meta.metrics["log_loss"])
    with pytest.raises(NotEnoughOutcomesError, match="needs 100000"):
        train_from_store(
            "store-org", tmp_path, settings.pg_dsn, org="org-001", min_conversions=100_000
        )
    assert not (tmp_path / "store-org").exists()
