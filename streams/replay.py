"""Replaying history under another model: a backtest, or rescoring every lead.

``backtest`` (``leadscore replay --dry-run``) rebuilds the labelled rows from the event
store (the training replay: features as of each lead's state before its outcome) and
compares the candidate with the active model on the same rows: AUC, log-loss, lift at
the top decile, calibration. Nothing is written.

``replay`` rescores every stored lead with the candidate, as of its latest event (as the
engine scores), in batches, each in one transaction: a changed score is recorded as a
LeadScored caused by ``replay:<version>`` and carrying the model version, so the audit
trail says why it changed, and score-events and read models follow as for any score.
A lead already rescored by the candidate does not change again, so an interrupted
replay is resumed by running it again, without double-recording.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import numpy as np

from adapters.evaluation import evaluate
from adapters.eventstore import LeadStore
from adapters.history import lead_events
from adapters.training_rows import training_rows
from domain.events import LeadEvent
from domain.lead import Lead, lead_aggregate_id
from domain.processing import event_time
from domain.scoring import Scorer, spec_of
from streams.bootstrap import Engine
from streams.processor import BatchProcessor

BATCH = 500
_CREATED = f"{Lead.LeadCreated.__module__}:{Lead.LeadCreated.__qualname__}"


def backtest(
    store: LeadStore,
    candidate: Scorer,
    active: Scorer,
    org: str | None = None,
    since: datetime | None = None,
) -> dict[str, Any]:
    events: Iterable[LeadEvent] = lead_events(store, org)
    if since is not None:
        recent = active_since(store, org, since)
        events = (e for e in events if lead_aggregate_id(e.org_id, e.lead_id) in recent)
    # Each model reads its own feature spec at the same prediction points.
    scorers = (("candidate", candidate), ("active", active))
    rows = list(training_rows(events, [spec_of(scorer).row for _name, scorer in scorers]))
    y = np.array([r.label for r in rows], dtype=np.int32)
    if len(y) == 0:
        raise ValueError("no labelled prediction points in the history yet")
    out: dict[str, Any] = {"rows": len(y), "conversions": int(np.sum(y))}
    for i, (name, scorer) in enumerate(scorers):
        X = np.array([r.values[i] for r in rows], dtype=np.float32)
        metrics = evaluate(y, np.asarray(scorer.predict(X), dtype=np.float64))
        out[name] = {"version": scorer.version, **metrics}
    return out


def lead_ids(
    store: LeadStore, org: str | None = None, since: datetime | None = None
) -> Iterator[UUID]:
    """Every stored lead (of ``org``; with an event at or after ``since``), in the order
    they were created."""
    recent = None if since is None else active_since(store, org, since)
    for note in store.all_notifications([_CREATED]):
        if recent is not None and note.originator_id not in recent:
            continue
        if org is None or store.to_event(note).org_id == org:
            yield note.originator_id


def active_since(store: LeadStore, org: str | None, since: datetime) -> set[UUID]:
    """The leads with a lead-event that occurred at or after ``since``."""
    return {
        lead_aggregate_id(e.org_id, e.lead_id)
        for e in lead_events(store, org)
        if e.occurred_at >= since
    }


@dataclass
class ReplayReport:
    leads: int = 0
    rescored: int = 0  # scores that changed, recorded


def replay(
    engine: Engine,
    candidate: Scorer,
    org: str | None = None,
    *,
    batch: int = BATCH,
    on_batch: Callable[[int, int], None] = lambda _leads, _changed: None,
    limit: int | None = None,
    since: datetime | None = None,
) -> ReplayReport:
    """Rescore stored leads (of ``org``, active ``since``) with ``candidate``; ``limit``
    stops early (as an interruption)."""
    processor = BatchProcessor(
        engine.store, engine.catalog, candidate, rules_for=engine.processor.rules_for
    )
    cause = f"replay:{candidate.version}"
    report = ReplayReport()
    ids = list(lead_ids(engine.store, org, since))
    if limit is not None:
        ids = ids[:limit]
    for start in range(0, len(ids), batch):
        chunk = ids[start : start + batch]
        changed = processor.rescore(chunk, event_time, cause)
        report.leads += len(chunk)
        report.rescored += changed
        on_batch(len(chunk), changed)
    return report


def count_leads(store: LeadStore, org: str | None = None, since: datetime | None = None) -> int:
    return sum(1 for _ in lead_ids(store, org, since))
