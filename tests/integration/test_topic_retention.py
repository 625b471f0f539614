"""The engine's topics hold the retention the settings give: both expire (README, "Privacy");
and topics are found by a fragment of their names and deleted (the test session's clean-up)."""

from __future__ import annotations

import dataclasses
import secrets

import pytest

from adapters.settings import Settings
from adapters.topics import (
    delete_topics,
    ensure_engine_topics,
    ensure_topics,
    topic_config,
    topics_containing,
)

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


def test_topics_found_by_a_fragment_of_their_names_are_deleted(settings: Settings) -> None:
    tag = secrets.token_hex(4)
    mine = [f"cleanup-{tag}", f"cleanup-{tag}.org.acme"]
    other = f"cleanup-other-{secrets.token_hex(4)}"
    ensure_topics(settings.kafka, [*mine, other], 1)
    assert topics_containing(settings.kafka, [f"-{tag}"]) == sorted(mine)
    assert topics_containing(settings.kafka, []) == []

    delete_topics(settings.kafka, mine)
    delete_topics(settings.kafka, mine)  # already gone: not an error

    assert topics_containing(settings.kafka, [f"-{tag}"]) == []
    assert topics_containing(settings.kafka, [other]) == [other]
    delete_topics(settings.kafka, [other])
