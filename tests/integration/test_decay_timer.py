"""The decay timer on real PostgreSQL: quiet leads are rescored, once, from the store."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from adapters.eventstore import SCORED_TOPIC, open_store
from adapters.settings import Settings
from devtools.workload import generate
from streams.bootstrap import bootstrap
from streams.decay import DecayTimer
from tests.support.pipeline import process_all
from tests.support.readmodels import project

pytestmark = pytest.mark.integration


def decay_scores(settings: Settings) -> list:  # type: ignore[type-arg]
    store = open_store(settings.pg_dsn, cache_size=0)
    try:
        events = [store.to_event(n) for n in store.all_notifications([SCORED_TOPIC])]
        return [e for e in events if e.caused_by_event_id.startswith("decay:")]
    finally:
        store.close()


def test_quiet_leads_decay_and_unchanged_scores_record_nothing(settings: Settings) -> None:
    history = list(generate(1, 300, 3_000, seed=5))
    engine = bootstrap(settings)  # the real ONNX model: it reads engagement and recency
    try:
        process_all(engine, history)
        asyncio.run(project(settings))  # lead_scores: where the timer finds candidates
        # Scores are stamped with the wall clock; the timer's clock runs past both.
        latest = max(max(e.occurred_at for e in history), datetime.now(UTC))
        far = latest + timedelta(days=120)
        timer = DecayTimer(
            engine.processor, settings.pg_dsn, after=timedelta(0), batch=10_000, clock=lambda: far
        )
        changed = timer.tick()
        assert changed > 0
        decayed = decay_scores(settings)
        assert len(decayed) == changed
        cause = f"decay:{far.isoformat()}"
        assert all(e.caused_by_event_id == cause and e.score <= e.previous_score for e in decayed)
        # The read model now holds the decayed scores; the rest had nothing to lose.
        asyncio.run(project(settings))
        assert timer.tick() == 0
        assert len(decay_scores(settings)) == changed
    finally:
        engine.close()
