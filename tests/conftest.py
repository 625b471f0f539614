"""Test session: unit tests need nothing; the others get real services, started here."""

from __future__ import annotations

import secrets
import shutil
import sys
from collections.abc import Iterator

import pytest

from adapters.settings import Settings

# Helpers in tests/support assert too (and hold LeadStoreContract's tests): let pytest
# rewrite their asserts as it does a test module's, so a failure shows its values.
pytest.register_assert_rewrite("tests.support")


@pytest.fixture(scope="session")
def base_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    import dataclasses

    # The model alone: the repository's scoring rules (config/scoring) are the demo's;
    # tests that exercise rules point the engine at rules of their own.
    no_rules = tmp_path_factory.mktemp("no-scoring-rules")
    # No decay timer either: tests compare states that must not move under them; the
    # timer's own tests drive it.
    return dataclasses.replace(
        Settings.from_env(), scoring_config_dir=str(no_rules), decay_interval_s=0
    )


# The tags of the tests' own settings (below): their topics go at the end of the session.
_TAGS: list[str] = []


@pytest.fixture(scope="session")
def services(base_settings: Settings) -> Iterator[Settings]:
    """Start Kafka, PostgreSQL and Redis (or reuse running ones); fail if they cannot start.

    At the end of the session, delete every topic a test's settings named (its
    lead-events, score-events and DLQ, the org topics and Faust's internal topics
    beside them): left behind, they pile up by the thousand on a developer's broker, and
    every metadata request and the broker's own timers pay for each of them."""
    from adapters.topics import TopicError, delete_topics, topics_containing
    from devtools import services as stack

    stack.up(base_settings)
    yield base_settings
    try:
        delete_topics(base_settings.kafka, topics_containing(base_settings.kafka, _TAGS))
    except TopicError as exc:  # clean-up only: the tests have passed or failed by now
        print(f"test topics left on the broker: {exc}", file=sys.stderr)


@pytest.fixture
def settings(services: Settings) -> Iterator[Settings]:
    """Settings isolated for one test: its own database, topics and consumer group."""
    import dataclasses

    from devtools import services as stack

    tag = secrets.token_hex(4)
    _TAGS.append(f"-{tag}")
    dbname = f"leadscore_test_{tag}"
    dsn = stack.ensure_database(services, dbname)
    s = dataclasses.replace(
        services,
        pg_dsn=dsn,
        topic_lead_events=f"lead-events-{tag}",
        topic_score_events=f"score-events-{tag}",
        topic_dlq=f"lead-events-{tag}.dlq",
        topic_partitions=3,
        consumer_group=f"leadscore-test-{tag}",
        aggregate_cache_size=10_000,
        redis_prefix=f"leadscore-test-{tag}",
        # Most tests produce for orgs they never register; tests of the check turn it on.
        require_registered_org=False,
        clickhouse_dsn=f"chdb://{services.run_path}/test-chdb-{tag}",
    )
    stack.ensure_topics(s.kafka, [s.topic_lead_events, s.topic_score_events, s.topic_dlq], 3)
    yield s
    stack.drop_database(services, dbname)
    _forget_redis_keys(s)
    shutil.rmtree(s.clickhouse_dsn.removeprefix("chdb://"), ignore_errors=True)


def _forget_redis_keys(s: Settings) -> None:
    import redis

    client = redis.Redis.from_url(s.redis_url)
    try:
        keys = list(client.scan_iter(match=f"{s.redis_prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
