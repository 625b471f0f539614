"""The engine's topics hold the retention the settings give: both expire (README, "Privacy")."""

from __future__ import annotations

import dataclasses
import secrets

import pytest

from adapters.settings import Settings
from adapters.topics import ensure_engine_topics, topic_config

pytestmark = pytest.mark.integration


def test_new_topics_are_created_with_the_configured_retention(settings: Settings) -> None:
    tag = secrets.token_hex(4)
    s = dataclasses.replace(
        settings,
        topic_lead_events=f"lead-events-r-{tag}",
        topic_score_events=f"score-events-r-{tag}",
        topic_dlq=f"lead-events-r-{tag}.dlq",
        lead_events_retention_ms=3 * 86_400_000,
    )
    ensure_engine_topics(s)
    assert topic_config(s.kafka, s.topic_dlq)["retention.ms"] == "2592000000"  # 30 days
    assert topic_config(s.kafka, s.topic_lead_events)["retention.ms"] == "259200000"


def test_an_existing_dlq_made_with_broker_defaults_is_set_to_the_configured_retention(
    settings: Settings,
) -> None:
    # The test's topics were made without a config: the broker's 7 days.
    assert topic_config(settings.kafka, settings.topic_dlq)["retention.ms"] == "604800000"
    ensure_engine_topics(settings)
    assert topic_config(settings.kafka, settings.topic_dlq)["retention.ms"] == "2592000000"
    changed = dataclasses.replace(settings, dlq_retention_ms=90 * 86_400_000)
    ensure_engine_topics(changed)
    assert topic_config(settings.kafka, settings.topic_dlq)["retention.ms"] == "7776000000"
