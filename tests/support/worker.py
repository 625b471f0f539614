"""The worker as a real process: starting it, reading its metrics, waiting on it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from adapters.settings import Settings, settings_env


def start(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings_env(settings), "LEADSCORE_LOG_LEVEL": "info"}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "leadscore.cli", "worker"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def metric(port: int, name: str, outcome: str | None = None) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read().decode()
    label = f'{name}{{outcome="{outcome}"}}' if outcome else name
    for line in body.splitlines():
        if line.startswith(label + " "):
            return float(line.split()[1])
    return 0.0


def wait_until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def wait_for_events(port: int, outcome: str, count: int, timeout: float, what: str) -> None:
    """Until the worker on ``port`` has counted ``count`` lead-events as ``outcome``."""
    wait_until(lambda: metric(port, "leadscore_lead_events_total", outcome) >= count, timeout, what)


def committed_all(settings: Settings) -> bool:
    admin = AdminClient(
        {
            **settings.kafka,
        }
    )
    req = ConsumerGroupTopicPartitions(settings.consumer_group)
    committed = admin.list_consumer_group_offsets([req])[settings.consumer_group].result()
    from confluent_kafka import Consumer

    c = Consumer({**settings.kafka, "group.id": "watermarks"})
    try:
        for tp in committed.topic_partitions:
            _lo, hi = c.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=5)
            if tp.offset < hi:
                return False
        return len(committed.topic_partitions) == settings.topic_partitions
    finally:
        c.close()


def committed_total(settings: Settings) -> int:
    """The consumer group's committed offsets, summed over its partitions."""
    admin = AdminClient({**settings.kafka})
    req = ConsumerGroupTopicPartitions(settings.consumer_group)
    found = admin.list_consumer_group_offsets([req])[settings.consumer_group].result()
    return sum(max(tp.offset, 0) for tp in found.topic_partitions)
