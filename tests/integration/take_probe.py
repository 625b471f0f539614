"""A Faust agent taking adaptive batches (streams/batching.py) and writing each one down.

Run by tests/integration/test_batching.py as ``python -m tests.integration.take_probe
TOPIC GROUP OUT_DIR MAX QUIET_S MAX_WAIT_S``, the broker and its credentials in the
LEADSCORE_* environment, on the worker's consumer (direct delivery, as streams/worker.py).
Every batch is appended to OUT_DIR/batches.jsonl as the wall-clock time it was handed
over and its values.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import faust

from adapters.settings import Settings
from streams.batching import take_adaptive
from streams.consumer import use_direct_delivery
from streams.worker import faust_app, faust_worker


def main(topic_name: str, group: str, out_dir: str, max_: str, quiet: str, wait: str) -> None:
    out = Path(out_dir)
    app = faust_app(group, Settings.from_env().kafka, out / "faust")
    # Fetches answered as soon as a byte is there, so the batches, not the fetches, are
    # what the test sees.
    use_direct_delivery(app, fetch_min_bytes=1, fetch_max_wait_ms=50)
    topic = app.topic(topic_name, key_type=bytes, value_type=bytes, partitions=3)

    @app.agent(topic, name="take-probe")
    async def probe(stream: faust.StreamT[bytes]) -> None:
        batches = take_adaptive(stream, int(max_), quiet=float(quiet), max_wait=float(wait))
        async for batch in batches:
            line = {"at": time.time(), "values": [e.message.value.decode() for e in batch]}
            with (out / "batches.jsonl").open("a") as f:
                f.write(json.dumps(line) + "\n")

    faust_worker(app, "warning").execute_from_commandline()


if __name__ == "__main__":
    main(*sys.argv[1:7])
