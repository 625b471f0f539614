"""Labelled training rows from a lead-event history, observed without looking ahead.

Both classes are observed the same way (invariant 9): every lead is looked at at
*prediction points* chosen without knowing how it ends, and a row is the lead's state at
its point, built only from events up to the point. Its label answers one question: does
the lead convert within ``horizon`` days after the point? The points are either

* at its lead-events (the default, ``ages_days=None``): right after each lead-event is
  applied, as of its time — exactly the states the worker scores, so training sees what
  serving sees (``event_sample`` keeps a fixed, outcome-blind share of them); or
* at fixed ages after creation (``ages_days``, e.g. 1, 3, 7, 14 and 30 days), from the
  events before the point.

* a lead with an outcome (converted or disqualified) before a point has no row there:
  it is no longer open, there is nothing to predict;
* converted within the horizon: 1; disqualified within it, or no outcome until the
  horizon has passed: 0;
* the horizon not over by the end of the history and no outcome yet: *censored*, we do
  not know the label, no row (counted in ``RowStats.censored``);
* a lead first seen through its outcome has no history to learn from.

Rows of one lead share its later outcome, so the split must be by time with a gap
(``time_split``): a training row's horizon ends before the holdout starts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from domain.events import EventType, LeadEvent
from domain.lead import Lead

AGES_DAYS: tuple[float, ...] = (1.0, 3.0, 7.0, 14.0, 30.0)  # for ages_days=AGES_DAYS
HORIZON_DAYS = 30.0
_OUTCOMES = {EventType.LEAD_CONVERTED: "converted", EventType.LEAD_DISQUALIFIED: "disqualified"}

# What to observe of a lead at a point: anything (a feature spec's raw values, another
# model's row, a points score). Each observer's value is kept in TrainingRow.values.
Observer = Callable[[Lead, datetime], Any]


@dataclass(frozen=True, slots=True)
class TrainingRow:
    """One labelled prediction point: a lead as of ``point``, ``age_days`` after creation."""

    org_id: str
    lead_id: str
    point: datetime
    age_days: float
    label: int
    outcome: str  # how the lead ended: converted, disqualified or open (as far as known)
    values: tuple[Any, ...]  # one per observer


@dataclass
class RowStats:
    leads: int = 0
    rows: int = 0
    censored: int = 0  # points whose horizon had not passed by the end of the history
    closed: int = 0  # points after the lead's outcome
    outcome_first: int = 0  # leads first seen through their outcome
    by_outcome: dict[str, int] = field(default_factory=dict)


@dataclass
class _Open:
    lead: Lead
    pending: list[float]  # ages still to observe, ascending
    observed: list[tuple[datetime, float, tuple[Any, ...]]] = field(default_factory=list)


def training_rows(
    events: Iterable[LeadEvent],
    observers: Sequence[Observer],
    *,
    ages_days: Sequence[float] | None = None,
    horizon_days: float = HORIZON_DAYS,
    end: datetime | None = None,
    stats: RowStats | None = None,
    event_sample: float = 1.0,
) -> Iterator[TrainingRow]:
    """Replay ``events`` (each lead's in the order they were applied) into labelled rows.

    ``end`` is when the history stops (default: its latest event); rows whose horizon
    reaches past it without an outcome are censored. Rows come as their labels become
    known: with an outcome, or at the end.
    """
    stats = stats if stats is not None else RowStats()
    horizon = timedelta(days=horizon_days)
    at_events = ages_days is None
    ages = [] if ages_days is None else sorted(float(a) for a in ages_days)
    leads: dict[tuple[str, str], _Open] = {}
    done: set[tuple[str, str]] = set()
    seen: set[tuple[str, str, str]] = set()
    latest: datetime | None = None
    for ev in events:
        if latest is None or ev.occurred_at > latest:
            latest = ev.occurred_at
        key = (ev.org_id, ev.lead_id)
        if key in done or (*key, ev.event_id) in seen:
            continue
        seen.add((*key, ev.event_id))
        state = leads.get(key)
        outcome = _OUTCOMES.get(ev.event_type)
        if state is None:
            if outcome is not None:
                stats.outcome_first += 1
                done.add(key)
                continue
            lead = Lead.open(ev)
            lead.collect_events()
            leads[key] = state = _Open(lead, list(ages))
            stats.leads += 1
            if at_events:
                _observe_event(state, ev.event_id, observers, event_sample)
            continue
        _observe_until(state, ev.occurred_at, observers)
        if outcome is not None:
            del leads[key]
            done.add(key)
            stats.closed += len(state.pending)
            yield from _labelled(state, outcome, ev.occurred_at, horizon, stats)
            continue
        state.lead.handle(ev)
        state.lead.collect_events()  # the replay keeps state, not the domain events
        if at_events:
            _observe_event(state, ev.event_id, observers, event_sample)
    stop = end or latest
    if stop is None:
        return
    for state in leads.values():
        _observe_until(state, stop, observers, inclusive=True)
        yield from _labelled(state, None, stop, horizon, stats)


def _observe_event(
    state: _Open, event_id: str, observers: Sequence[Observer], sample: float
) -> None:
    """Observe the lead as the worker scores it after this lead-event: as of its latest
    event. A share ``sample`` of events is kept, chosen by a hash of the ids alone."""
    lead = state.lead
    if sample < 1.0 and _unit(lead.org_id, lead.lead_id, event_id) >= sample:
        return
    point = lead.last_open_event_at  # the lead is open here: its worker's scoring clock
    age = (point - lead.created_at).total_seconds() / 86_400.0
    state.observed.append((point, age, tuple(o(lead, point) for o in observers)))


def _unit(*ids: str) -> float:
    """A number in [0, 1) fixed by the ids (not Python's per-process hash())."""
    digest = hashlib.blake2b("\x1f".join(ids).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _observe_until(
    state: _Open, before: datetime, observers: Sequence[Observer], inclusive: bool = False
) -> None:
    """Observe every pending point before ``before``: the lead's state now is its state
    then, since ``before`` is the time of the first event after those points."""
    created = state.lead.created_at
    while state.pending:
        point = created + timedelta(days=state.pending[0])
        if point > before or (point == before and not inclusive):
            return
        age = state.pending.pop(0)
        state.observed.append((point, age, tuple(o(state.lead, point) for o in observers)))


def _labelled(
    state: _Open,
    outcome: str | None,
    at: datetime,
    horizon: timedelta,
    stats: RowStats,
) -> Iterator[TrainingRow]:
    lead = state.lead
    for point, age, values in state.observed:
        if outcome is not None and at <= point + horizon:
            label = 1 if outcome == "converted" else 0
        elif outcome is not None or point + horizon <= at:
            label = 0  # the horizon passed with no conversion
        else:
            stats.censored += 1
            continue
        stats.rows += 1
        ended = outcome or "open"
        stats.by_outcome[ended] = stats.by_outcome.get(ended, 0) + 1
        yield TrainingRow(lead.org_id, lead.lead_id, point, age, label, ended, values)


def time_split(
    points: np.ndarray,
    horizon_days: float,
    holdout_fraction: float = 0.2,
) -> tuple[np.ndarray, np.ndarray, datetime]:
    """Indices of training and holdout rows, and when the holdout starts.

    The holdout is the latest ``holdout_fraction`` of prediction points. Training rows
    are those whose whole horizon ended before it starts: a gap of one horizon, so no
    training label was decided by what happened in the holdout's time.
    """
    t = np.asarray(points, dtype="datetime64[ms]")
    order = np.argsort(t, kind="stable")
    cut = int(round(len(t) * (1.0 - holdout_fraction)))
    if cut >= len(t):
        raise ValueError("no rows left for a holdout")
    start = t[order[cut]]
    gap = np.timedelta64(int(horizon_days * 86_400_000), "ms")
    train = np.flatnonzero(t + gap <= start)
    holdout = np.flatnonzero(t >= start)
    when = datetime.fromisoformat(str(start.astype("datetime64[ms]")) + "+00:00")
    return train, holdout, when


def epoch_ms(rows: Sequence[TrainingRow]) -> np.ndarray:
    return np.array([round(r.point.timestamp() * 1000) for r in rows], dtype="datetime64[ms]")
