"""PSI and reference binning (domain/drift.py), and the reference training writes."""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from adapters.drift import DriftRecorder, Reference
from devtools.workload import generate
from domain.drift import bin_counts, level, proportions, psi, reference_edges
from domain.features import FEATURE_NAMES
from domain.processing import BatchOutcome, Observation
from leadscore.drift_reference import add_reference
from leadscore.training import train

# Continuous values, and counts/booleans with few distinct values (the features have both).
values = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False),
    st.integers(0, 5).map(float),
    st.sampled_from([0.0, 1.0]),
)
samples = st.lists(values, min_size=1, max_size=300)


def reference(sample: list[float]) -> tuple[list[float], list[float]]:
    edges = reference_edges(sample)
    return edges, proportions(bin_counts(sample, edges))


@hsettings(max_examples=200, deadline=None)
@given(samples, st.lists(values, min_size=1, max_size=300))
def test_psi_is_never_negative(training: list[float], recent: list[float]) -> None:
    edges, expected = reference(training)
    value = psi(expected, bin_counts(recent, edges))
    assert value is not None and value >= 0.0


@hsettings(max_examples=200, deadline=None)
@given(samples)
def test_psi_of_the_training_distribution_itself_is_zero(training: list[float]) -> None:
    edges, expected = reference(training)
    assert psi(expected, bin_counts(training, edges)) == 0.0


@hsettings(max_examples=200, deadline=None)
@given(samples, st.randoms(use_true_random=False))
def test_psi_does_not_depend_on_the_order_of_samples(
    training: list[float], rnd: random.Random
) -> None:
    edges, expected = reference(training)
    shuffled = training[:]
    rnd.shuffle(shuffled)
    recent = training[: len(training) // 2 + 1]
    mixed = recent[:]
    rnd.shuffle(mixed)
    assert reference(shuffled) == (edges, expected)
    assert psi(expected, bin_counts(mixed, edges)) == psi(expected, bin_counts(recent, edges))


@hsettings(max_examples=200, deadline=None)
@given(samples, st.lists(values, min_size=1, max_size=300))
def test_psi_grows_as_the_recent_window_moves_away_from_training(
    training: list[float], other: list[float]
) -> None:
    # Recent = (1 - t) x training + t x another distribution: the further t goes, the
    # more it has shifted, and PSI never falls (each term is convex in t, 0 at t = 0).
    edges, expected = reference(training)
    base, away = bin_counts(training, edges), proportions(bin_counts(other, edges))
    n = sum(base)
    previous = 0.0
    for step in range(11):
        t = step / 10
        mixed = [(1 - t) * b + t * n * a for b, a in zip(base, away, strict=True)]
        value = psi(expected, mixed)
        assert value is not None and value >= previous - 1e-12
        previous = value


def test_a_shifted_normal_drifts_further_the_further_it_is_shifted() -> None:
    rnd = random.Random(5)
    training = [rnd.gauss(0, 1) for _ in range(20_000)]
    edges, expected = reference(training)
    assert len(edges) == 9 and all(abs(p - 0.1) < 0.01 for p in expected)
    values = []
    for shift in (0.0, 0.1, 0.25, 0.4, 1.0):  # in standard deviations
        recent = [rnd.gauss(shift, 1) for _ in range(20_000)]
        values.append(psi(expected, bin_counts(recent, edges)))
    assert values == sorted(values)
    assert [level(v) for v in values] == [
        "stable",
        "stable",
        "stable",
        "moderate",
        "significant",
    ]


def test_few_distinct_values_get_one_bin_each_and_no_empty_bin() -> None:
    flags = [0.0] * 90 + [1.0] * 10
    assert reference_edges(flags) == [1.0]
    assert bin_counts(flags, [1.0]) == [90, 10]
    counts = [float(i % 4) for i in range(1000)]
    edges = reference_edges(counts)
    assert edges == [1.0, 2.0, 3.0]
    assert 0 not in bin_counts(counts, edges)
    assert reference_edges([7.0] * 50) == []  # a constant: one bin, PSI always 0
    assert psi([1.0], [3]) == 0.0


def test_empty_recent_window_has_no_psi_and_empty_bins_are_smoothed() -> None:
    assert psi([0.5, 0.5], [0, 0]) is None and level(None) is None
    value = psi([0.5, 0.5], [10, 0])
    assert value is not None and math.isfinite(value) and level(value) == "significant"


def test_levels_follow_the_stated_thresholds() -> None:
    assert [level(v) for v in (0.0, 0.099, 0.1, 0.25, 0.2501)] == [
        "stable",
        "stable",
        "moderate",
        "moderate",
        "significant",
    ]


def test_training_writes_the_reference_and_an_older_model_can_get_it_back(
    tmp_path: Path,
) -> None:
    history = list(generate(5, 1_500, 15_000, seed=3))
    meta = train(history, version="t1", out_dir=tmp_path, num_trees=10)
    ref = meta.reference
    assert set(ref["features"]) == set(FEATURE_NAMES) and ref["rows"] == meta.n_train
    for part in [*ref["features"].values(), ref["score"]]:
        assert len(part["proportions"]) == len(part["edges"]) + 1
        assert abs(sum(part["proportions"]) - 1) < 1e-4 and min(part["proportions"]) > 0
    assert all(0 <= e <= 100 for e in ref["score"]["edges"])

    # A model from before references: the same rows rebuilt give the same reference.
    path = tmp_path / "t1" / "metadata.json"
    stored = json.loads(path.read_text())
    del stored["reference"]
    path.write_text(json.dumps(stored))
    again = add_reference(tmp_path / "t1", history, "regenerated")
    assert again == {**ref, "source": "regenerated"}
    assert json.loads(path.read_text())["reference"] == again


# -- the recorder bins a batch of many orgs in one pass (adapters/drift.py) --------------

V1_META = json.loads(Path("models/onnx/v1/metadata.json").read_text())
feature_value = st.one_of(st.floats(-1e3, 1e6, width=32), st.just(math.nan), st.just(0.0))


@st.composite
def observations(draw: st.DrawFn) -> list[Observation]:
    width = len(V1_META["feature_names"])
    seen = []
    for org in range(draw(st.integers(0, 6))):
        n = draw(st.integers(0, 4))  # an org with nothing scored is skipped
        rows = [draw(st.lists(feature_value, min_size=width, max_size=width)) for _ in range(n)]
        scores = draw(st.lists(st.floats(0, 100), min_size=n, max_size=n))
        seen.append(Observation(f"org-{org}", "v1", rows, scores))
    return seen


@hsettings(max_examples=100, deadline=None)
@given(observations())
def test_one_pass_over_a_batch_counts_as_each_org_alone(seen: list[Observation]) -> None:
    def recorder() -> DriftRecorder:  # never flushes, so never connects
        r = DriftRecorder("postgresql://nobody@127.0.0.1:1/none", "unused", 1e9)
        r._refs["v1"] = Reference.of(V1_META)
        return r

    alone, together = recorder(), recorder()
    for o in seen:
        alone.observe(o.org_id, o.model_version, o.rows, o.scores)
    together(BatchOutcome(observations=seen), datetime.now(UTC))
    assert together._pending.keys() == alone._pending.keys()
    assert {org for _v, org, _h in together._pending} == {o.org_id for o in seen if o.scores}
    for key, counts in alone._pending.items():
        assert counts.tolist() == together._pending[key].tolist(), key
        assert counts.sum() == len(Reference.of(V1_META).names) * sum(
            len(o.scores) for o in seen if o.org_id == key[1]
        )
    for hour, counts in alone._recent.get("v1", {}).items():
        assert counts.tolist() == together._recent["v1"][hour].tolist()
