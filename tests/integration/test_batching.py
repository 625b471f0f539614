"""streams/batching.py: adaptive batches on the worker's consumer, against the test broker.

A Faust agent (tests/integration/take_probe.py) takes batches of at most 50 with a quiet
gap of 0.3 s and a maximum wait of 20 s, far apart so each rule is seen on its own: a lone
lead-event goes once the stream is quiet, long before the maximum wait (Faust's
take_events would hold it for its ``within`` timer); a burst goes in full batches; every
value is taken once and the group's offsets are committed to the end.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from faust.streams import Stream

from adapters.settings import Settings, settings_env
from streams.batching import take_adaptive
from tests.support.probes import jsonl, source_sha256

pytestmark = pytest.mark.integration

MAX, QUIET_S, MAX_WAIT_S = 50, 0.3, 20.0

# sha256 of faust-streaming 0.15.3's Stream.take_events, whose buffer and acks
# streams/batching.py follows. A new Faust changes it: compare the two, carry over what
# changed, then update this.
FAUST_TAKE_EVENTS_SHA256 = "607d48aead118ba8ea868718a0df87de1c5fcecd10ec542c659b448796728e08"


def test_the_followed_take_is_fausts_of_the_pinned_version() -> None:
    assert source_sha256(Stream.take_events) == FAUST_TAKE_EVENTS_SHA256, (
        "faust-streaming's Stream.take_events changed: re-read streams/batching.py"
    )


def _batches(out: Path) -> list[dict[str, object]]:
    return jsonl(out / "batches.jsonl")


def _taken(out: Path) -> list[str]:
    return [str(v) for b in _batches(out) for v in b["values"]]  # type: ignore[attr-defined]


def _wait_for(out: Path, n: int, probe: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(_taken(out)) < n:
        assert probe.poll() is None, (out / "probe.log").read_text()[-3000:]
        assert time.monotonic() < deadline, f"{len(_taken(out))} of {n} taken"
        time.sleep(0.05)


def _committed_to_end(s: Settings, group: str) -> bool:
    c = Consumer({**s.kafka, "group.id": group, "enable.auto.commit": False})
    try:
        parts = [TopicPartition(s.topic_lead_events, p) for p in range(s.topic_partitions)]
        committed = c.committed(parts, timeout=10)
        for tp in committed:
            _low, high = c.get_watermark_offsets(tp, timeout=10)
            if high > 0 and tp.offset != high:
                return False
        return True
    finally:
        c.close()


def test_a_lone_event_goes_when_quiet_a_burst_in_full_batches(
    settings: Settings, tmp_path: Path
) -> None:
    producer = Producer(settings.kafka)

    def produce(values: list[str]) -> None:
        for v in values:
            producer.produce(settings.topic_lead_events, key=v, value=v)
        assert producer.flush(30) == 0

    produce(["first"])  # waiting for the probe's group to join
    env = {
        **os.environ,
        **settings_env(settings),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    with (tmp_path / "probe.log").open("wb") as log:
        probe = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.take_probe", settings.topic_lead_events,
             settings.consumer_group, str(tmp_path), str(MAX), str(QUIET_S), str(MAX_WAIT_S)],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    try:
        _wait_for(tmp_path, 1, probe, 120)
        sent = time.time()
        produce(["lone"])
        _wait_for(tmp_path, 2, probe, 60)
        lone = _batches(tmp_path)[-1]
        assert lone["values"] == ["lone"]
        # Handed over once nothing came for QUIET_S, not after MAX_WAIT_S.
        assert float(lone["at"]) - sent < MAX_WAIT_S / 2, lone  # type: ignore[arg-type]

        burst = [f"b{i}" for i in range(230)]
        produce(burst)
        _wait_for(tmp_path, 232, probe, 60)
        time.sleep(2 * QUIET_S)  # anything beyond would be a duplicate
        sizes = [len(b["values"]) for b in _batches(tmp_path)[2:]]  # type: ignore[arg-type]
        assert sum(sizes) == 230 and max(sizes) == MAX, sizes
        assert Counter(sizes)[MAX] >= 3, sizes  # a burst is not cut into small batches
        assert Counter(_taken(tmp_path)) == Counter(["first", "lone", *burst])  # each once

        deadline = time.monotonic() + 30  # Faust commits acked offsets every few seconds
        while not _committed_to_end(settings, settings.consumer_group):
            assert time.monotonic() < deadline, "offsets not committed to the end"
            time.sleep(0.5)
    finally:
        os.killpg(probe.pid, signal.SIGTERM)
        probe.wait(timeout=60)


@pytest.mark.parametrize(
    ("max_", "quiet", "max_wait"), [(0, 0.1, 1.0), (10, 0.0, 1.0), (10, 0.5, 0.1), (10, -1, 1)]
)
def test_settings_that_cannot_batch_are_refused(max_: int, quiet: float, max_wait: float) -> None:
    async def first() -> None:
        await take_adaptive(None, max_, quiet=quiet, max_wait=max_wait).__anext__()  # type: ignore[arg-type]

    with pytest.raises(ValueError, match="need max_"):
        asyncio.run(first())
