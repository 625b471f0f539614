"""Training on a world we did not design the features for (devtools/world_custom.py):
conversion follows an education company's own fields and time on site, not B2B titles.

The model, built from lead-events through the org's feature spec, must come within 0.02
AUC of a LightGBM given the generator's ground truth at the same prediction points and
split, beat the points model, explain itself in the org's own words, and be refused when
a field knows the outcome.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from adapters.evaluation import auc
from adapters.modelstore import load_scorer
from adapters.training_rows import epoch_ms, time_split, training_rows
from devtools.world_custom import LEAK_ATTRIBUTE, CustomWorld, custom_world
from domain.featurespec import parse
from domain.processing import apply_batch, event_time
from leadscore.training import LeakageError, ModelMetadata, lightgbm_params, train

LEADS = 4_000
SPEC = {
    "version": 1,
    "builtin": ["days_since_created"],
    "fields": [
        *({"attribute": a} for a in ("occupation", "specialization", "lead_origin")),
        {"attribute": "do_not_email"},
        {"attribute": "city"},
        {"field": "source"},
        {"field": "industry"},
    ],
    "activities": [
        {"kind": "page_view", "count": ["all", 7, 30], "days_since_last": True},
        {
            "kind": "page_view",
            "property": "seconds_on_site",
            "stats": ["sum", "mean", "max"],
            "windows": [7, 30],
        },
        {"kind": "page_view", "property": "pages", "stats": ["sum", "mean"]},
        {"kind": "page_view", "property": "campaign", "type": "categorical"},
        {"kind": "email_open", "count": ["all"]},
        {"kind": "email_click", "count": ["all"]},
    ],
}


@pytest.fixture(scope="module")
def world() -> CustomWorld:
    return custom_world(leads=LEADS, seed=7)


@pytest.fixture(scope="module")
def trained(
    world: CustomWorld, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ModelMetadata, Path]:
    out = tmp_path_factory.mktemp("models")
    return train(world.events, version="own", out_dir=out, spec=parse(SPEC)), out


def direct_auc(world: CustomWorld) -> float:
    """LightGBM on the generator's ground-truth drivers, same points, labels and split."""
    rows = list(training_rows(world.events, [lambda lead, at: world.truth(lead.lead_id, at)]))
    y = np.array([r.label for r in rows])
    tr, ho, _start = time_split(epoch_ms(rows), 30.0, 0.2)
    levels = {n: sorted({str(r.values[0][n]) for r in rows}) for n in world.truth_categorical}
    X = np.array(
        [
            [
                float(levels[n].index(str(r.values[0][n])))
                if n in levels
                else float(r.values[0][n])
                for n in world.truth_names
            ]
            + [r.age_days]
            for r in rows
        ],
        dtype=np.float32,
    )
    params = lightgbm_params(
        num_leaves=15, learning_rate=0.08, min_data_in_leaf=40, seed=7, num_threads=1
    )
    data = lgb.Dataset(
        X[tr],
        label=y[tr],
        feature_name=[*world.truth_names, "age"],
        categorical_feature=list(world.truth_categorical),
    )
    booster = lgb.train(params, data, num_boost_round=100)
    result = auc(y[ho], booster.predict(X[ho]))
    assert result is not None
    return result


def test_the_model_comes_within_002_of_lightgbm_on_the_ground_truth(
    world: CustomWorld, trained: tuple[ModelMetadata, Path]
) -> None:
    meta, _ = trained
    ours, truth = meta.metrics["auc"], direct_auc(world)
    # Measured: ours 0.80, ground truth 0.80, points 0.49, logistic 0.80 (4,000 leads).
    assert ours >= truth - 0.02, (ours, truth)
    assert truth > 0.7  # the world has signal to find
    base = meta.metrics["baselines"]
    assert ours > base["points"]["auc"] + 0.2  # B2B points rules know nothing of this org
    assert base["logistic"]["auc"] is not None and base["logistic"]["n"] == meta.n_holdout
    gains = meta.metrics["feature_importance_gain"]
    assert max(gains, key=gains.__getitem__) in ("occupation", "page_view.seconds_on_site.mean")


def test_the_model_carries_its_spec_and_vocabularies(trained: tuple[ModelMetadata, Path]) -> None:
    meta, out = trained
    stored = json.loads((out / "own" / "metadata.json").read_text())  # strict JSON: no NaN
    assert stored["feature_spec"]["vocabularies"]["occupation"][-1] == "working professional"
    scorer = load_scorer(out, "own")
    assert scorer.spec.names == tuple(meta.feature_names)
    assert scorer.spec.vocabularies["lead_origin"]  # learned from the org's own history


def test_scores_are_explained_in_the_orgs_own_words(
    world: CustomWorld, trained: tuple[ModelMetadata, Path]
) -> None:
    _meta, out = trained
    scorer = load_scorer(out, "own")
    leads: dict = {}
    for start in range(0, 3_000, 500):
        batch = world.events[start : start + 500]
        result = apply_batch(batch, leads, scorer, event_time, batch[-1].occurred_at)
        leads.update(result.touched)
    labels = [f["label"] for lead in leads.values() for f in lead.factors]
    assert any(label.startswith("occupation: working professional") for label in labels)
    assert any("seconds on site" in label and ("min" in label or " s" in label) for label in labels)


def test_a_field_that_knows_the_outcome_is_refused(
    trained: tuple[ModelMetadata, Path], tmp_path: Path
) -> None:
    leaky = custom_world(leads=LEADS, seed=7, leaky=True)
    spec = parse({**SPEC, "fields": [*SPEC["fields"], {"attribute": LEAK_ATTRIBUTE}]})
    with pytest.raises(LeakageError, match=LEAK_ATTRIBUTE):
        train(leaky.events, version="leaky", out_dir=tmp_path, spec=spec)
    assert list(tmp_path.iterdir()) == []
    # Overridden on purpose: trained, and the override is in the metadata.
    meta = train(leaky.events, version="leaky", out_dir=tmp_path, spec=spec, allow_leaky=True)
    assert meta.metrics["leakage"]["overridden"] == [LEAK_ATTRIBUTE]
    # What a leak looks like: far better than the honest model on the same world.
    assert meta.metrics["auc"] > trained[0].metrics["auc"] + 0.1


def test_an_org_with_no_disqualified_leads_trains(world: CustomWorld, tmp_path: Path) -> None:
    """No disqualifications at all: every metric is a number or null, never NaN."""
    from domain.events import EventType

    events = [e for e in world.events if e.event_type is not EventType.LEAD_DISQUALIFIED]
    meta = train(events, version="nodq", out_dir=tmp_path, spec=parse(SPEC))
    assert "disqualified" not in meta.metrics["rows"]["by_outcome"]
    json.loads((tmp_path / "nodq" / "metadata.json").read_text(), parse_constant=_no_nan)


def _no_nan(token: str) -> None:
    raise AssertionError(f"{token} in metadata.json")


def test_one_batch_scores_each_org_with_its_own_models_spec(
    world: CustomWorld, trained: tuple[ModelMetadata, Path]
) -> None:
    """The org's model reads its spec's row; another org in the same batch, on the global
    model, reads the builtin row: each explained in its model's own terms."""
    from tests.support.factories import MODEL_DIR, activity, created

    own = load_scorer(trained[1], "own")
    v1 = load_scorer(MODEL_DIR, "v1")
    b2b = [created(lead="b2b-1", org="org-b2b"), activity(lead="b2b-1", org="org-b2b")]
    batch = [*world.events[:400], *b2b]
    result = apply_batch(
        batch, {}, lambda org: own if org == world.org_id else v1, event_time, world.end
    )
    by_org: dict[str, set[str]] = {}
    for lead in result.touched.values():
        assert lead.model_version == ("own" if lead.org_id == world.org_id else "v1")
        by_org.setdefault(lead.org_id, set()).update(f["feature"] for f in lead.factors)
    assert by_org[world.org_id] <= set(own.spec.names)
    assert by_org["org-b2b"] and by_org["org-b2b"] <= set(v1.spec.names)
    assert by_org[world.org_id] - set(v1.spec.names)  # features only the org's spec has
