"""The import's mapping and row rules, without Kafka (tests/integration/test_import.py
runs the command against the real services)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapters.settings import ROOT
from domain.events import ActivityKind, EventType
from leadscore.import_mapping import Mapping, MappingError, load_mapping, parse_mapping
from leadscore.importer import RowRefusedError, lead_events

NOW = datetime(2026, 12, 6, tzinfo=UTC)
RAW = yaml.safe_load((ROOT / "examples" / "crm-mapping.yaml").read_text())
ROW = {
    "Prospect ID": "p-1",
    "Lead Origin": "API",
    "Lead Source": "Google",
    "Do Not Email": "No",
    "Converted": "1",
    "TotalVisits": "4.0",
    "Total Time Spent on Website": "1001",
    "Page Views Per Visit": "2.5",
    "Last Activity": "Email Opened",
    "Country": "India",
    "Specialization": "Select",
    "What is your current occupation": "Working Professional",
    "City": "",
}


def _mapping(change: Any = None) -> Mapping:
    raw = copy.deepcopy(RAW)
    if change:
        change(raw)
    return parse_mapping(raw)


def test_the_example_mapping_loads() -> None:
    mapping = load_mapping(ROOT / "examples" / "crm-mapping.yaml")
    assert mapping.lead_id_column == "Prospect ID"
    assert mapping.outcome.kind(" 1 ") == "converted" and mapping.outcome.kind("0") == "open"
    assert mapping.outcome.kind("2") is None


def test_a_row_becomes_created_visits_and_outcome() -> None:
    events = lead_events("acme-edu", "p-1", ROW, _mapping(), NOW)
    created, *views, outcome = events
    assert created.event_type is EventType.LEAD_CREATED
    assert created.profile == {"source": "Google", "country": "India"}
    # "Select" and "" are blank: not sent.
    assert created.attributes == {
        "lead_origin": "API",
        "do_not_email": "No",
        "occupation": "Working Professional",
    }
    assert [v.activity_kind for v in views] == [ActivityKind.PAGE_VIEW] * 4
    assert sum(int(v.activity_properties["seconds_on_site"]) for v in views) == 1001
    assert {v.activity_properties["pages"] for v in views} == {"2.5"}
    assert outcome.event_type is EventType.LEAD_CONVERTED
    assert outcome.occurred_at == created.occurred_at + timedelta(days=21)
    times = [ev.occurred_at for ev in events]
    assert times == sorted(times) and views[-1].occurred_at < outcome.occurred_at
    assert views[-1].occurred_at - created.occurred_at < timedelta(days=14)


def test_ids_and_times_are_the_same_on_every_import() -> None:
    again = lead_events("acme-edu", "p-1", ROW, _mapping(), NOW + timedelta(days=30))
    assert again == lead_events("acme-edu", "p-1", ROW, _mapping(), NOW)
    other = lead_events("acme-edu", "p-2", ROW, _mapping(), NOW)
    assert {e.event_id for e in other}.isdisjoint(e.event_id for e in again)
    other_org = lead_events("acme-other", "p-1", ROW, _mapping(), NOW)
    assert {e.event_id for e in other_org}.isdisjoint(e.event_id for e in again)


def test_created_times_fill_the_window_and_outcomes_never_pass_its_end() -> None:
    mapping = _mapping()
    assert mapping.window_end is not None
    created = [
        lead_events("acme-edu", f"p-{i}", ROW, mapping, NOW)[0].occurred_at for i in range(400)
    ]
    start = mapping.window_end - timedelta(days=180)
    assert all(start <= t < mapping.window_end for t in created)
    assert min(created) < start + timedelta(days=10) and max(created) > mapping.window_end - (
        timedelta(days=10)
    )
    for i in range(400):
        last = lead_events("acme-edu", f"p-{i}", ROW, mapping, NOW)[-1]
        assert last.occurred_at <= mapping.window_end


def test_open_rows_have_no_outcome_and_summary_mode_one_view() -> None:
    events = lead_events("acme-edu", "p-1", {**ROW, "Converted": "0"}, _mapping(), NOW)
    assert EventType.LEAD_CONVERTED not in {e.event_type for e in events}
    summary = _mapping(lambda raw: raw["activities"].update(mode="summary"))
    _, view, _ = lead_events("acme-edu", "p-1", ROW, summary, NOW)
    assert view.activity_properties == {
        "visits": "4",
        "seconds_on_site": "1001",
        "pages_per_visit": "2.5",
    }
    none = _mapping(lambda raw: raw.update(activities={"mode": "none"}))
    assert len(lead_events("acme-edu", "p-1", ROW, none, NOW)) == 2


def test_time_on_site_without_visits_is_one_visit_and_many_visits_are_capped() -> None:
    events = lead_events("acme-edu", "p-1", {**ROW, "TotalVisits": ""}, _mapping(), NOW)
    assert sum(e.activity_kind is ActivityKind.PAGE_VIEW for e in events) == 1
    capped = _mapping(lambda raw: raw["activities"].update(max_visits=3))
    events = lead_events("acme-edu", "p-1", {**ROW, "TotalVisits": "250"}, capped, NOW)
    assert sum(e.activity_kind is ActivityKind.PAGE_VIEW for e in events) == 3


def test_creation_and_outcome_columns() -> None:
    def columns(raw: dict[str, Any]) -> None:
        raw["created_at"] = {"column": "Created On"}
        raw["outcome"]["at_column"] = "Converted On"

    mapping = _mapping(columns)
    row = {**ROW, "Created On": "2026-10-01 09:30:00", "Converted On": "2026-10-05T10:00:00+02:00"}
    created, *_, outcome = lead_events("acme-edu", "p-1", row, mapping, NOW)
    assert created.occurred_at == datetime(2026, 10, 1, 9, 30, tzinfo=UTC)
    assert outcome.occurred_at == datetime(2026, 10, 5, 8, 0, tzinfo=UTC)
    with pytest.raises(RowRefusedError, match="not after the lead's creation"):
        lead_events("acme-edu", "p-1", {**row, "Converted On": "2026-09-30"}, mapping, NOW)
    with pytest.raises(RowRefusedError, match="not an ISO 8601 time"):
        lead_events("acme-edu", "p-1", {**row, "Created On": "yesterday"}, mapping, NOW)
    with pytest.raises(RowRefusedError, match="outside"):  # the engine's own validation
        lead_events(
            "acme-edu", "p-1", {**row, "Created On": "2027-06-01", "Converted": "0"}, mapping, NOW
        )


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"Converted": "maybe"}, "not a converted, disqualified or open value"),
        ({"TotalVisits": "lots"}, "is not a number"),
        ({"TotalVisits": "nan"}, "out of range"),
        ({"Total Time Spent on Website": "-1"}, "out of range"),
        ({"City": "Pune\x00"}, "control characters"),
        ({"Lead Origin": "x" * 1001}, "longer than"),
    ],
)
def test_bad_rows_are_refused_with_the_reason(change: dict[str, str], why: str) -> None:
    with pytest.raises(RowRefusedError, match=why):
        lead_events("acme-edu", "p-1", {**ROW, **change}, _mapping(), NOW)


def _set(path: str, value: Any) -> Any:
    def change(raw: dict[str, Any]) -> None:
        *parents, key = path.split(".")
        node = raw
        for p in parents:
            node = node[p]
        if value is None:
            del node[key]
        else:
            node[key] = value

    return change


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (_set("lead_id", {}), "either column or derive"),
        (_set("lead_id", {"derive": "row_color"}), "row_number, row_hash"),
        (_set("profile", {"favourite_colour": "City"}), "unknown field"),
        (_set("created_at", {"window_days": 30}), "give column, or window_end"),
        (_set("created_at.window_end", "last tuesday"), "ISO 8601"),
        (_set("outcome.converted", []), "converted"),
        (_set("outcome.open", ["1"]), "listed twice"),
        (_set("outcome.open", [False]), "quote yes/no/true/false"),
        (_set("outcome.after_days", -3), "positive number"),
        (_set("activities.mode", "daily"), "per_visit, summary, none"),
        (_set("activities.visits", None), "number of visits"),
        (_set("attributes", ["occupation"]), "name: column pairs"),
    ],
)
def test_mapping_mistakes_are_named(change: Any, why: str) -> None:
    with pytest.raises(MappingError, match=why):
        _mapping(change)


def test_a_mapping_that_is_not_yaml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mapping.yaml"
    path.write_text("lead_id: [unclosed")
    with pytest.raises(MappingError):
        load_mapping(path)
