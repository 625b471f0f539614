"""`leadscore import`: a CRM export through the registry and Kafka into the event store,
twice, each lead-event applied once; bad rows refused and reported, never fatal."""

from __future__ import annotations

import csv
import dataclasses
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.settings import ROOT, Settings, settings_env
from domain.events import EventType
from domain.lead import lead_aggregate_id
from leadscore.import_mapping import load_mapping
from streams.bootstrap import Engine, bootstrap
from streams.codec import record_to_event
from tests.support.factories import FixedScorer
from tests.support.pipeline import lead_event_values

pytestmark = pytest.mark.integration

EXAMPLE = ROOT / "examples" / "crm-export.csv"
MAPPING = ROOT / "examples" / "crm-mapping.yaml"
ORG = "acme-edu"
GOOD_ROWS = 60


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    e = bootstrap(settings, scorer=FixedScorer())
    yield e
    e.close()


def _leadscore(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings_env(settings)}
    return subprocess.run(
        [sys.executable, "-m", "leadscore.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _export_with_bad_rows(path: Path) -> tuple[list[dict[str, str]], list[str]]:
    """The example's first rows, then rows each broken in one way."""
    with EXAMPLE.open(newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        good = [row for _, row in zip(range(GOOD_ROWS), reader, strict=False)]
    bad = [
        {**good[0], "Prospect ID": "p-maybe", "Converted": "maybe"},
        {**good[1], "Prospect ID": "p-lots", "TotalVisits": "lots"},
        {**good[2], "Prospect ID": "p-escape", "City": "Mumbai\x1b[31m"},
        {**good[3]},  # the same lead id as a row before it
        {**good[4], "Prospect ID": " "},
        {**good[5], "Prospect ID": "p-negative", "Total Time Spent on Website": "-5"},
    ]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in [*good[:30], *bad, *good[30:]]:
            writer.writerow([row[c] for c in header])
        writer.writerow(["p-short", "1", "API"])  # fewer fields than the header
    reasons = [
        "not a converted, disqualified or open value",
        "TotalVisits 'lots' is not a number",
        "control characters",
        "lead id repeats line",
        "Prospect ID is empty",
        "out of range",
        "number of fields",
    ]
    return good, reasons


def test_importing_an_export_twice_applies_each_lead_event_once(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    export = tmp_path / "export.csv"
    good, reasons = _export_with_bad_rows(export)
    mapping = load_mapping(MAPPING)

    first = _leadscore(settings, "import", "--org", ORG, "--mapping", str(MAPPING), str(export))
    assert first.returncode == 0, first.stdout + first.stderr
    out = " ".join(first.stdout.split())
    assert f"rows read │ {GOOD_ROWS + 7}" in out
    assert f"leads imported │ {GOOD_ROWS}" in out
    assert "rows refused │ 7" in out
    for reason in reasons:
        assert reason in out, reason
    produced = int(out.split("lead-events produced to")[1].split("│")[1].strip().replace(",", ""))
    second = _leadscore(settings, "import", "--org", ORG, "--mapping", str(MAPPING), str(export))
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"lead-events produced to {settings.topic_lead_events} │ {produced:,}" in " ".join(
        second.stdout.split()
    )

    values = lead_event_values(settings, expected=2 * produced)
    assert len(values) == 2 * produced
    stats = engine.processor.process(values)
    assert (stats.received, stats.invalid, stats.failed) == (2 * produced, 0, 0)
    assert (stats.applied, stats.duplicates) == (produced, produced)

    # The store holds each good row's lead once, with each of its lead-events once.
    ids = [lead_aggregate_id(ORG, row["Prospect ID"]) for row in good]
    leads = engine.store.load(ids)
    assert all(leads[i] is not None for i in ids)
    everything = [record_to_event(engine.catalog.decode(v)) for v in values]
    # The second import sent exactly the first one's event ids.
    assert Counter(Counter(ev.event_id for ev in everything).values()) == {2: produced}
    decoded = list({ev.event_id: ev for ev in everything}.values())
    per_lead: dict[str, int] = {}
    for ev in decoded:
        per_lead[ev.lead_id] = per_lead.get(ev.lead_id, 0) + 1
    assert set(per_lead) == {row["Prospect ID"] for row in good}
    for row in good:
        lead = leads[lead_aggregate_id(ORG, row["Prospect ID"])]
        assert lead is not None
        assert lead.applied_count == per_lead[row["Prospect ID"]]
        visits = round(float(row["TotalVisits"])) or int(
            float(row["Total Time Spent on Website"]) > 0
        )
        outcome = 1 if row["Converted"] == "1" else 0
        assert lead.applied_count == 1 + visits + outcome
        assert lead.outcome == ("converted" if outcome else None)
        if row["What is your current occupation"]:
            assert lead.attributes["occupation"] == row["What is your current occupation"]
        assert "last_activity" not in lead.attributes  # not mapped: it leaks
        assert lead.profile.get("source") == row["Lead Source"]
    # Every lead-event went out as lead_event v3 with stable ids, before its outcome.
    assert {ev.event_type for ev in decoded} == {
        EventType.LEAD_CREATED,
        EventType.ACTIVITY_RECORDED,
        EventType.LEAD_CONVERTED,
    }
    assert mapping.window_end is not None
    assert all(ev.occurred_at <= mapping.window_end for ev in decoded)


def test_an_unregistered_org_or_a_broken_mapping_stops_before_any_row(
    settings: Settings, tmp_path: Path
) -> None:
    registered = dataclasses.replace(settings, require_registered_org=True)
    refused = _leadscore(
        registered, "import", "--org", "org-nobody", "--mapping", str(MAPPING), str(EXAMPLE)
    )
    assert refused.returncode == 2
    assert "org-nobody is not registered" in refused.stdout
    broken = tmp_path / "mapping.yaml"
    broken.write_text(MAPPING.read_text().replace("column: Converted", "column: Enrolled"))
    missing = _leadscore(settings, "import", "--org", ORG, "--mapping", str(broken), str(EXAMPLE))
    assert missing.returncode == 2
    assert "lacks column(s): Enrolled" in " ".join(missing.stdout.split())
    assert lead_event_values(settings, expected=1, timeout=3) == []
