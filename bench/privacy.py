"""Personal data encrypted per lead: its CPU per lead-event, and erasure of 1,000 leads.

Paired, in the same run, on the dev PostgreSQL: lead-events applied, scored, saved and
then every lead reloaded cold (decrypting its LeadCreated/LeadUpdated and snapshots),
with the event store's PiiMapper and lead keys (ours) and with the library's plain
mapper and no keys (peer, what the engine did before issue 17). CPU is this process's
(``time.process_time``) per lead-event; the ratio is ours over the peer's per run pair.
The scorer is a fixed arithmetic one, so the denominator leaves out ONNX: the share
encryption takes of a real worker's CPU is smaller than the ratio says.

Then 1,000 leads are forgotten one by one (``leadscore.erasure.forget_lead``: shred,
LeadForgotten, shadow scores), wall time. Target (issue 17): encryption under 10% of
the CPU per lead-event.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.persistence import Mapper
from rich.console import Console

from adapters.erasure import forget_lead
from adapters.eventstore import LeadStore, open_store, postgres_env
from adapters.lead_keys import LeadKeys
from adapters.settings import get_settings
from bench.harness import RUNS, Spread, paired_ratio, write_results
from devtools import services as stack
from devtools.workload import generate
from domain.events import LeadEvent
from domain.features import FEATURE_NAMES
from domain.lead import lead_aggregate_id
from domain.processing import apply_batch, event_time

console = Console()
LEADS, EVENTS, BATCH, FORGET = 2_000, 20_000, 1_000, 1_000
DB = "leadscore_bench_privacy"


class ArithmeticScorer:
    version = "bench-1"
    feature_names = FEATURE_NAMES

    def predict(self, rows: Sequence[Sequence[float]]) -> list[float]:
        return [min(0.99, 0.05 + 0.01 * sum(row[:4])) for row in rows]


class PlainStore(LeadStore):
    """The peer: the library's mapper, no lead keys (personal data stored in the clear)."""

    def construct_mapper(self) -> Mapper[UUID]:
        return Application.construct_mapper(self)


def run(store: LeadStore, events: list[LeadEvent]) -> float:
    """CPU seconds per lead-event to store ``events`` and reload every lead cold."""
    scorer, now = ArithmeticScorer(), datetime.now(UTC)
    touched: set[UUID] = set()
    start = time.process_time()
    for i in range(0, len(events), BATCH):
        batch = events[i : i + BATCH]
        ids = {store_id(e) for e in batch}
        out = apply_batch(batch, store.load(ids), scorer, event_time, now)
        store.save_leads(list(out.touched.values()))
        touched |= set(out.touched)
    store.evict(touched)
    store.load(touched)
    return (time.process_time() - start) / len(events)


def store_id(e: LeadEvent) -> UUID:
    return lead_aggregate_id(e.org_id, e.lead_id)


def relabel(events: list[LeadEvent], tag: str) -> list[LeadEvent]:
    """The same workload for new leads (orgs renamed), so each run creates its keys."""
    return [dataclasses.replace(e, org_id=f"{e.org_id}-{tag}") for e in events]


def main() -> None:
    s = get_settings()
    dsn = stack.ensure_database(s, DB)
    workload = list(generate(4, LEADS, EVENTS, seed=17))
    ours_runs: list[float] = []
    peer_runs: list[float] = []
    try:
        ours = open_store(dsn, cache_size=LEADS * 2, snapshot_interval=20)
        peer = PlainStore(env=postgres_env(dsn, cache_size=LEADS * 2))
        peer.snapshot_interval = 20
        peer.keys = LeadKeys(ours.keys.keks, None)
        for r in range(RUNS):
            # Alternate who goes first, so neither always meets a warmer database.
            pair = [(ours, ours_runs, "o"), (peer, peer_runs, "p")]
            for store, out, name in pair if r % 2 == 0 else reversed(pair):
                out.append(run(store, relabel(workload, f"{name}{r}")) * 1e6)
        forgettable = list(dict.fromkeys((e.org_id, e.lead_id) for e in relabel(workload, "o0")))
        start = time.perf_counter()
        for org, lead in forgettable[:FORGET]:
            forget_lead(ours, dsn, org, lead, "bench")
        forget_s = time.perf_counter() - start
        ours.close()
        peer.close()
    finally:
        stack.drop_database(s, DB)
    o, p = Spread.of(ours_runs), Spread.of(peer_runs)
    share = paired_ratio(ours_runs, peer_runs)
    body = (
        f"Workload: {EVENTS:,} lead-events of {LEADS:,} leads (4 orgs), batches of {BATCH:,}, "
        "snapshot every 20 versions, then every lead reloaded cold.\n\n"
        "| CPU per lead-event (µs) | median (min, max) |\n|---|---|\n"
        f"| encrypted per lead (ours) | {o} |\n"
        f"| clear, no keys (peer) | {p} |\n"
        f"| ratio ours/peer (paired) | {share.median:.3f} "
        f"(min {share.low:.3f}, max {share.high:.3f}) |\n\n"
        f"Erasure: {FORGET:,} leads forgotten one by one in {forget_s:.1f} s "
        f"({forget_s / FORGET * 1000:.1f} ms each).\n"
    )
    console.print(body)
    console.print(f"written to {write_results('privacy', body)}")


if __name__ == "__main__":
    main()
