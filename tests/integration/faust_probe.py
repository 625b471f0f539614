"""A Faust agent on streams.consumer's transport that records what it is given.

Run by tests/integration/test_consumer.py as ``python -m tests.integration.faust_probe
TOPIC GROUP OUT_DIR``, the broker and its credentials in the LEADSCORE_* environment.
The agent's first batch sleeps, so the stream's small buffer fills and later deliveries
take the guarded path. Every event is appended to OUT_DIR/seen.jsonl as partition,
offset and value; OUT_DIR/deliveries.json holds the consumer's counts of direct and
guarded deliveries, rewritten after every batch.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import faust

from adapters.settings import Settings
from streams.consumer import use_direct_delivery
from streams.worker import faust_app, faust_worker

BUFFER = 40  # the stream's buffer: small, so a sleeping agent fills it


def main(topic_name: str, group: str, out_dir: str) -> None:
    out = Path(out_dir)
    app = faust_app(
        group,
        Settings.from_env().kafka,
        out / "faust",
        broker_max_poll_records=100,
        stream_buffer_maxsize=BUFFER,
        stream_wait_empty=False,
    )
    use_direct_delivery(app)
    topic = app.topic(topic_name, key_type=bytes, value_type=bytes, partitions=3)

    @app.agent(topic, name="probe")
    async def probe(stream: faust.StreamT[bytes]) -> None:
        first = True
        async for batch in stream.take_events(100, within=0.2):
            if first:
                first = False
                await asyncio.sleep(2.0)
            with (out / "seen.jsonl").open("a") as f:
                for event in batch:
                    m = event.message
                    f.write(json.dumps({"p": m.partition, "o": m.offset, "v": m.value.decode()}))
                    f.write("\n")
            consumer = app.consumer
            counts = {"direct": consumer.delivered_direct, "guarded": consumer.delivered_guarded}
            (out / "deliveries.json").write_text(json.dumps(counts))

    faust_worker(app, "warning").execute_from_commandline()


if __name__ == "__main__":
    main(*sys.argv[1:4])
