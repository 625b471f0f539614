"""`leadscore produce --world custom`: the second world through the registry and Kafka
into the engine, its attributes and activity properties intact."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from adapters.settings import Settings, settings_env
from devtools.world_custom import LEAK_ATTRIBUTE, custom_world
from domain.lead import lead_aggregate_id
from streams.bootstrap import Engine, bootstrap
from streams.codec import record_to_event
from tests.support.factories import FixedScorer
from tests.support.pipeline import lead_event_values

pytestmark = pytest.mark.integration

LEADS = 150


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    e = bootstrap(settings, scorer=FixedScorer())
    yield e
    e.close()


def test_the_custom_world_reaches_the_leads_with_its_own_fields(
    engine: Engine, settings: Settings
) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "leadscore.cli", "produce", "--world", "custom", "--leaky",
         "--leads", str(LEADS)],
        env={**os.environ, **settings_env(settings)},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    world = custom_world(leads=LEADS, leaky=True)
    assert f"sent {len(world.events):,} lead-events (0 failed)" in run.stdout

    values = lead_event_values(settings, expected=len(world.events))
    assert len(values) == len(world.events)
    received = {
        ev.event_id: ev for ev in (record_to_event(engine.catalog.decode(v)) for v in values)
    }
    assert received == {ev.event_id: ev for ev in world.events}  # attributes and properties too
    stats = engine.processor.process(values)
    assert (stats.applied, stats.invalid, stats.failed) == (len(world.events), 0, 0)

    lead_id = next(ev.lead_id for ev in world.events if LEAK_ATTRIBUTE in ev.attributes)
    lead = engine.store.load([lead_aggregate_id(world.org_id, lead_id)])[
        lead_aggregate_id(world.org_id, lead_id)
    ]
    assert lead is not None
    expected: dict[str, str] = {}
    for ev in world.events:
        if ev.lead_id == lead_id:
            expected.update(ev.attributes)
    assert lead.attributes == expected and LEAK_ATTRIBUTE in expected
