"""Feature specs: parsing says what is wrong, rows follow the Lead's running state, the
default spec is the builtin row exactly, vocabularies are learned from training rows."""

from __future__ import annotations

import dataclasses
import re
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.events import ActivityKind, EventType, LeadEvent
from domain.features import FEATURE_NAMES, NO_ACTIVITY_DAYS, features
from domain.featurespec import (
    DEFAULT_SPEC,
    MISSING,
    MISSING_NUMBER,
    OTHER,
    FeatureSpec,
    FeatureSpecError,
    learn_vocabularies,
    parse,
)
from domain.lead import Lead
from tests.support.factories import T0, created, next_id

SPEC = {
    "version": 2,
    "builtin": ["days_since_created"],
    "fields": [
        {"attribute": "occupation"},
        {"attribute": "score_card", "type": "numeric"},
        {"field": "source", "max_categories": 2, "min_count": 1},
    ],
    "activities": [
        {"kind": "page_view", "count": ["all", 7], "days_since_last": True},
        {"kind": "page_view", "property": "seconds", "stats": ["sum", "mean", "max", "last"],
         "windows": [7]},
        {"kind": "any", "property": "campaign", "type": "categorical"},
    ],
}  # fmt: skip


def visit(at: object, seconds: str, campaign: str | None = None, lead: str = "lead-1") -> LeadEvent:
    props = {"seconds": seconds, **({"campaign": campaign} if campaign else {})}
    return LeadEvent(
        next_id(), EventType.ACTIVITY_RECORDED, "org-1", lead, at,  # type: ignore[arg-type]
        activity_kind=ActivityKind.PAGE_VIEW, activity_properties=props,
    )  # fmt: skip


def lead_with_visits() -> Lead:
    first = created(source="referral")
    first = dataclasses.replace(first, attributes={"occupation": "Student"})
    lead = Lead.open(first)
    for day, seconds, campaign in ((0, "60", "spring"), (2, "120", None), (20, "300", "fall")):
        lead.handle(visit(T0 + timedelta(days=day, hours=1), seconds, campaign))
    lead.handle(visit(T0 + timedelta(days=21), "a lot"))  # text: not a number
    return lead


def test_a_spec_names_its_columns_in_order() -> None:
    spec = parse(SPEC)
    assert spec.names == (
        "days_since_created", "occupation", "score_card", "source",
        "page_view.count", "page_view.count_7d", "page_view.days_since_last",
        "page_view.seconds.sum", "page_view.seconds.mean", "page_view.seconds.max",
        "page_view.seconds.last", "page_view.seconds.sum_7d", "any.campaign.last",
    )  # fmt: skip
    assert spec.categorical == ("occupation", "source", "any.campaign.last")


def test_rows_follow_the_running_state() -> None:
    spec = parse(SPEC).with_vocabularies({"occupation": ["student"], "any.campaign.last": ["fall"]})
    lead = lead_with_visits()
    now = T0 + timedelta(days=22)
    raw = dict(zip(spec.names, spec.observe(lead, now), strict=True))
    assert raw["occupation"] == "Student" and raw["source"] == "referral"
    assert raw["score_card"] is None  # never set
    assert raw["page_view.count"] == 4 and raw["page_view.count_7d"] == 2  # days 20 and 21
    assert raw["page_view.days_since_last"] == pytest.approx(1.0)
    assert raw["page_view.seconds.sum"] == 480 and raw["page_view.seconds.mean"] == 160
    assert raw["page_view.seconds.max"] == 300 and raw["page_view.seconds.last"] == 300
    assert raw["page_view.seconds.sum_7d"] == 300
    assert raw["any.campaign.last"] == "fall"
    row = dict(zip(spec.names, spec.row(lead, now), strict=True))
    assert row["occupation"] == 2 and row["any.campaign.last"] == 2  # the vocabulary's first
    assert row["source"] == OTHER  # no vocabulary learned for it: every value is "other"
    assert row["score_card"] == MISSING_NUMBER


def test_a_lead_with_nothing_reads_as_the_reference() -> None:
    spec = parse(SPEC)
    lead = Lead.open(created(source=None))  # type: ignore[arg-type]
    row = spec.row(lead, T0)
    ref = spec.reference(row)
    named = dict(zip(spec.names, row, strict=True))
    assert named["page_view.days_since_last"] == NO_ACTIVITY_DAYS
    assert named["occupation"] == MISSING and named["page_view.seconds.mean"] == MISSING_NUMBER
    assert row == ref  # nothing known: nothing to explain


def test_the_default_spec_is_the_builtin_row_exactly() -> None:
    lead = lead_with_visits()
    now = T0 + timedelta(days=3)
    assert DEFAULT_SPEC.names == FEATURE_NAMES
    assert DEFAULT_SPEC.row(lead, now) == features(lead, now)
    assert DEFAULT_SPEC.encode(DEFAULT_SPEC.observe(lead, now)) == features(lead, now)


def test_a_spec_survives_metadata() -> None:
    spec = parse(SPEC).with_vocabularies({"occupation": ["student", "professional"]})
    again = FeatureSpec.from_dict(spec.to_dict())
    assert again == spec


@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False))
def test_spec_numbers_have_six_significant_digits(value: float) -> None:
    """float32 keeps about 7: room for LightGBM's float64 split points (ONNX parity)."""
    spec = parse({"version": 1, "fields": [{"attribute": "x", "type": "numeric"}]})
    lead = Lead.open(dataclasses.replace(created(), attributes={"x": repr(value)}))
    (encoded,) = spec.row(lead, T0)
    assert encoded == float(f"{value:.6g}")


def test_vocabularies_keep_frequent_values_ordered_by_conversion() -> None:
    spec = parse({"version": 1, "fields": [{"attribute": "a", "min_count": 2}]})
    observed = [["x"], ["x"], ["x"], ["y"], ["y"], ["z"], [None]]
    labels = [1, 1, 0, 0, 0, 1, 1]
    vocab = learn_vocabularies(spec, observed, labels)
    assert vocab == {"a": ("y", "x")}  # z is rare; y converts less than x


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "expected a mapping"),
        ({"builtin": "all"}, "'version'"),
        ({"version": 1}, "names no features"),
        ({"version": 1, "builtin": ["shoe_size"]}, "unknown builtin feature 'shoe_size'"),
        ({"version": 1, "fields": [{"field": "phone"}]}, "'phone' is not a profile field"),
        ({"version": 1, "fields": [{"attribute": "a", "field": "title"}]}, "exactly one of"),
        ({"version": 1, "fields": [{"attribute": "a", "type": "date"}]}, "categorical or numeric"),
        ({"version": 1, "activities": [{"kind": "call", "count": ["all"]}]}, "'kind' is 'any'"),
        ({"version": 1, "activities": [{"kind": "any", "count": [90]}]}, "days 1-30"),
        ({"version": 1, "activities": [{"kind": "any"}]}, "asks for nothing"),
        (
            {"version": 1, "activities": [{"kind": "any", "property": "p", "stats": ["median"]}]},
            "unknown stats ['median']",
        ),
        (
            {"version": 1, "fields": [{"attribute": "source"}, {"field": "source"}]},
            "features named twice: ['source']",
        ),
    ],
)
def test_bad_specs_say_what_is_wrong(doc: object, message: str) -> None:
    with pytest.raises(FeatureSpecError, match=re.escape(message)):
        parse(doc, "spec.yaml")


def test_the_shipped_default_spec_parses() -> None:
    import yaml

    from adapters.settings import ROOT

    spec = parse(yaml.safe_load((ROOT / "config" / "features" / "default.yaml").read_text()))
    assert spec.names == FEATURE_NAMES
