"""The model store: the committed default model loads and scores like the domain expects."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from adapters.modelstore import ModelNotFoundError, OnnxScorer, list_models, load_scorer
from devtools.workload import generate
from domain.features import FEATURE_NAMES
from domain.lead import Lead
from domain.scoring import check_model, score_leads
from leadscore.training import build_dataset
from tests.support.factories import MODEL_DIR, T0, activity, created


@pytest.fixture(scope="module")
def v1() -> OnnxScorer:
    return load_scorer(MODEL_DIR, "v1")


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    X, _, _ = build_dataset(generate(3, 600, 6_000, seed=21))
    assert len(X) > 100
    return X


def copy_model(src: Path, dst: Path, **changes: object) -> None:
    shutil.copytree(src, dst)
    meta = json.loads((dst / "metadata.json").read_text())
    meta.update(changes)
    (dst / "metadata.json").write_text(json.dumps(meta))


def test_v1_is_committed_small_and_checked() -> None:
    meta = json.loads((MODEL_DIR / "v1" / "metadata.json").read_text())
    assert (MODEL_DIR / "v1" / "model.onnx").stat().st_size < 1_000_000
    assert meta["parity_max_abs_diff"] <= 1e-4
    assert 0.75 < meta["metrics"]["auc"] < 0.99


def test_v1_speaks_the_domain_features(v1: OnnxScorer) -> None:
    assert v1.version == "v1"
    assert v1.feature_names == FEATURE_NAMES
    assert v1.metadata["version"] == "v1"
    check_model(v1)  # the domain's own guard accepts it


def test_predict_shape_and_range(v1: OnnxScorer, rows: np.ndarray) -> None:
    p = v1.predict(rows)
    assert isinstance(p, np.ndarray) and p.shape == (len(rows),)
    assert np.all((p >= 0) & (p <= 1))
    assert p.std() > 0.05  # it tells leads apart


def test_batch_equals_one_row_at_a_time(v1: OnnxScorer, rows: np.ndarray) -> None:
    batch = v1.predict(rows[:200])
    single = np.array([v1.predict(rows[i : i + 1])[0] for i in range(200)])
    np.testing.assert_allclose(batch, single, rtol=0, atol=1e-7)
    as_lists = v1.predict(rows[:200].tolist())
    np.testing.assert_array_equal(as_lists, batch)


def test_bad_input(v1: OnnxScorer) -> None:
    assert v1.predict([]).shape == (0,)
    with pytest.raises(ValueError):
        v1.predict([[1.0, 2.0]])
    with pytest.raises(ValueError):
        v1.predict(np.zeros(len(FEATURE_NAMES), dtype=np.float32))  # 1-D: not a batch


def test_scores_a_lead_through_the_domain(v1: OnnxScorer) -> None:
    keen = Lead.open(created())
    for day in range(1, 6):
        keen.handle(activity(at=T0 + timedelta(days=day)))
    keen.handle(activity(kind="demo_request", at=T0 + timedelta(days=6)))  # type: ignore[arg-type]
    quiet = Lead.open(created(lead="lead-2", title="student", email="kid@gmail.com"))
    now = T0 + timedelta(days=6)
    cards = score_leads([keen, quiet], [now, now], v1)
    assert [c.model_version for c in cards] == ["v1", "v1"]
    assert all(0 <= c.total <= 100 for c in cards)
    assert cards[0].total > cards[1].total


def test_session_is_single_threaded(v1: OnnxScorer) -> None:
    opts = v1._session.get_session_options()
    assert opts.intra_op_num_threads == 1


def test_newest_by_trained_at(tmp_path: Path) -> None:
    copy_model(
        MODEL_DIR / "v1",
        tmp_path / "b-old",
        version="b-old",
        trained_at="2025-01-01T00:00:00+00:00",
    )
    copy_model(
        MODEL_DIR / "v1",
        tmp_path / "a-new",
        version="a-new",
        trained_at="2026-06-01T00:00:00+00:00",
    )
    (tmp_path / ".a-half-written").mkdir()  # training's temporary directory: ignored
    assert [m["version"] for m in list_models(tmp_path)] == ["b-old", "a-new"]
    assert load_scorer(tmp_path).version == "a-new"
    assert load_scorer(tmp_path, "b-old").version == "b-old"


def test_missing_models_raise(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="v404"):
        load_scorer(MODEL_DIR, "v404")
    with pytest.raises(ModelNotFoundError):
        load_scorer(tmp_path)  # an empty directory
    with pytest.raises(ModelNotFoundError):
        load_scorer(MODEL_DIR, "../onnx/v1")  # a version is a name, not a path
    assert list_models(tmp_path / "nowhere") == []
    assert "v1" in [m["version"] for m in list_models(MODEL_DIR)]
