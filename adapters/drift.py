"""Model drift: bin what each model scores, per org and hour, and compare with training.

The worker calls ``DriftRecorder.observe`` with every scored batch; counts accumulate in
memory and are added to the ``model_drift`` table every ``flush_interval_s``. The
bins are the model's reference bins (``reference`` in its metadata.json, written by
training), so a row of that table is only meaningful with the model version it names.
``drift_report`` turns a window of those counts into PSI per feature and for the score.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import orjson
import psycopg
import structlog
from prometheus_client import Gauge

from adapters.eventstore import ddl_lock
from domain import drift
from domain.features import FEATURE_NAMES
from domain.processing import BatchOutcome, Observation

log = structlog.get_logger(__name__)

# Set by the worker's drift tracker (below), scraped from the worker's metrics endpoint.
MODEL_PSI = Gauge(
    "leadscore_model_psi",
    "Population stability index of this worker's last 24 h of scored leads against the "
    "model's training set, per feature and for the score (< 0.1 stable, > 0.25 significant)",
    ["model_version", "feature"],
)

SCORE = "score"  # the score's name among the features in model_drift and the report
HOUR = 3600
METRICS_WINDOW_HOURS = 24

DDL = """
CREATE TABLE IF NOT EXISTS model_drift (
    model_version text NOT NULL,
    org_id text NOT NULL,
    window_start timestamptz NOT NULL,
    feature text NOT NULL,
    bin integer NOT NULL,
    count bigint NOT NULL,
    PRIMARY KEY (model_version, org_id, window_start, feature, bin)
)
"""

UPSERT = """
INSERT INTO model_drift (model_version, org_id, window_start, feature, bin, count)
SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::text[], %s::int[],
                     %s::bigint[])
ON CONFLICT (model_version, org_id, window_start, feature, bin)
DO UPDATE SET count = model_drift.count + EXCLUDED.count
"""

WINDOW_COUNTS = """
SELECT feature, bin, sum(count)::bigint FROM model_drift
WHERE model_version = $1 AND org_id = $2 AND window_start >= $3
GROUP BY feature, bin
"""

# A version names a directory under the model directory, never a path out of it.
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class NoReferenceError(LookupError):
    """The model has no training reference to compare with (trained before drift existed)."""


def model_metadata(model_dir: Path, version: str) -> dict[str, Any] | None:
    """metadata.json of ``version``, or None when there is no such model."""
    path = Path(model_dir) / version / "metadata.json"
    if not _VERSION.match(version) or not path.is_file():
        return None
    meta: dict[str, Any] = orjson.loads(path.read_bytes())
    return meta


@dataclass(frozen=True)
class Reference:
    """A model's reference bins, laid out flat: every feature's bins, then the score's."""

    source: str
    names: tuple[str, ...]  # the model's feature names + ("score",)
    edges: tuple[np.ndarray, ...]
    expected: tuple[list[float], ...]
    offsets: np.ndarray  # where each variable's bins start in the flat layout
    size: int

    @classmethod
    def of(cls, meta: dict[str, Any]) -> Reference:
        ref = meta.get("reference") or {}
        if not ref.get("features") or not ref.get("score"):
            raise NoReferenceError(
                f"model {meta.get('version')} has no training reference for drift; "
                "models trained before drift monitoring need one added "
                "(leadscore.drift_reference.add_reference_from_provenance)"
            )
        features = tuple(meta.get("feature_names") or FEATURE_NAMES)
        parts = [ref["features"][name] for name in features] + [ref["score"]]
        # Features are compared as float32, the type the model reads; the score as float64.
        edges = tuple(
            np.asarray(p["edges"], dtype=np.float32 if i < len(features) else np.float64)
            for i, p in enumerate(parts)
        )
        widths = [len(e) + 1 for e in edges]
        return cls(
            source=str(ref.get("source", "")),
            names=(*features, SCORE),
            edges=edges,
            expected=tuple([float(x) for x in p["proportions"]] for p in parts),
            offsets=np.cumsum([0, *widths[:-1]]),
            size=sum(widths),
        )

    def count_groups(
        self,
        rows: Sequence[Sequence[float]],
        scores: Any,
        groups: np.ndarray,
        n_groups: int,
    ) -> np.ndarray:
        """Flat bin counts per group, ``(n_groups, size)``: rows in the model's feature
        order, scores 0-100, row ``i`` counted in group ``groups[i]``. One pass over a
        batch however many orgs it holds: numpy's fixed cost per call (about 45 µs for 20
        features) is paid once, not once per org."""
        n, width = len(scores), len(self.names) - 1
        if sum(map(len, rows)) != n * width:
            raise ValueError(f"expected {n} rows of {width} features")
        # Twice as fast as np.asarray on a list of lists: the bulk of observe()'s cost.
        X = np.fromiter(itertools.chain.from_iterable(rows), np.float32, n * width)
        X = X.reshape(n, width)
        if len(X) != n:
            raise ValueError(f"{len(X)} feature rows for {n} scores")
        # A missing value (NaN) falls below every value, as in the training reference.
        columns = np.ascontiguousarray(np.nan_to_num(X.T, nan=drift.MISSING_BIN))
        idx = np.empty((len(self.edges), n), dtype=np.intp)
        for j in range(width):
            idx[j] = np.searchsorted(self.edges[j], columns[j], side="right")
        idx[width] = np.searchsorted(
            self.edges[width], np.asarray(scores, dtype=np.float64), side="right"
        )
        idx += self.offsets[:, None] + np.asarray(groups, dtype=np.intp)[None, :] * self.size
        flat = np.bincount(idx.ravel(), minlength=n_groups * self.size)
        return flat.astype(np.int64).reshape(n_groups, self.size)

    def split(self, flat: Sequence[int] | np.ndarray) -> dict[str, list[int]]:
        return {
            name: [int(c) for c in flat[start : start + len(edges) + 1]]
            for name, start, edges in zip(self.names, self.offsets, self.edges, strict=True)
        }

    def psi(self, flat: Sequence[int] | np.ndarray) -> dict[str, float | None]:
        counts = self.split(flat)
        return {
            name: drift.psi(expected, counts[name])
            for name, expected in zip(self.names, self.expected, strict=True)
        }


def _hour(epoch: float) -> int:
    return int(epoch // HOUR) * HOUR


class DriftRecorder:
    """Bins scored rows in memory; adds the counts to ``model_drift`` now and then.

    Thread-safe. A failed flush keeps its counts for the next one: drift monitoring
    never stops scoring, and a database outage loses no counts.
    """

    def __init__(
        self,
        dsn: str,
        model_dir: Path | str,
        flush_interval_s: float = 10.0,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.dsn = dsn
        self.model_dir = Path(model_dir)
        self.flush_interval_s = flush_interval_s
        self.clock = clock
        self._lock = threading.Lock()
        self._refs: dict[str, Reference | None] = {}
        self._pending: dict[tuple[str, str, int], np.ndarray] = {}
        # This process's own counts per version and hour, all orgs: the metrics' window.
        self._recent: dict[str, dict[int, np.ndarray]] = {}
        self._due = time.monotonic() + flush_interval_s
        self._conn: psycopg.Connection[Any] | None = None

    def reference(self, version: str) -> Reference | None:
        if version not in self._refs:
            meta = model_metadata(self.model_dir, version)
            try:
                self._refs[version] = Reference.of(meta or {"version": version})
            except NoReferenceError as exc:
                log.warning("no drift reference: not observing this model", error=str(exc))
                self._refs[version] = None
        return self._refs[version]

    def __call__(self, outcome: BatchOutcome, scored_at: datetime) -> None:
        """As a sink of the batch processor: what each model saw in the batch, per org,
        binned in one pass per model (a live batch holds a few leads of many orgs)."""
        by_model: dict[str, list[Observation]] = {}
        for seen in outcome.observations:
            by_model.setdefault(seen.model_version, []).append(seen)
        for version, seen_by in by_model.items():
            self._observe(version, seen_by)

    def observe(
        self,
        org_id: str,
        model_version: str,
        rows: Sequence[Sequence[float]] | np.ndarray,
        scores: Sequence[float] | np.ndarray,
    ) -> None:
        """Count one org's scored batch: feature rows (the model's order), scores 0-100."""
        self._observe(model_version, [Observation(org_id, model_version, rows, scores)])

    def _observe(self, model_version: str, seen: list[Observation]) -> None:
        """Bin one model's observations, of any number of orgs, in one pass."""
        seen = [o for o in seen if len(o.scores)]
        ref = self.reference(model_version) if seen else None
        if ref is None:
            return
        counts = ref.count_groups(
            [row for o in seen for row in o.rows],
            [x for o in seen for x in o.scores],
            np.repeat(np.arange(len(seen)), [len(o.scores) for o in seen]),
            len(seen),
        )
        hour = _hour(self.clock())
        with self._lock:
            recent = self._recent.setdefault(model_version, {})
            for o, org_counts in zip(seen, counts, strict=True):
                key = (model_version, o.org_id, hour)
                if key in self._pending:
                    self._pending[key] += org_counts
                else:
                    self._pending[key] = org_counts.copy()
                if hour in recent:
                    recent[hour] += org_counts
                else:
                    recent[hour] = org_counts.copy()
            due = time.monotonic() >= self._due
        if due:
            self.flush()

    def flush(self) -> None:
        """Add the pending counts to ``model_drift`` and refresh the PSI gauges."""
        with self._lock:
            pending, self._pending = self._pending, {}
            self._due = time.monotonic() + self.flush_interval_s
            self._set_gauges()
        if not pending:
            return
        columns: tuple[list[Any], ...] = ([], [], [], [], [], [])
        # Sorted keys: two workers adding to the same rows lock them in the same order.
        for version, org, hour in sorted(pending):
            ref = self._refs[version]
            assert ref is not None  # only versions with a reference are ever pending
            when = datetime.fromtimestamp(hour, UTC)
            for name, counts in ref.split(pending[version, org, hour]).items():
                for b, c in enumerate(counts):
                    if c:
                        for col, v in zip(columns, (version, org, when, name, b, c), strict=True):
                            col.append(v)
        try:
            conn = self._connection()
            conn.execute(UPSERT, columns)
        except (psycopg.Error, OSError) as exc:
            log.warning("drift counts not stored; kept for the next flush", error=str(exc))
            self._close_connection()
            with self._lock:
                for key, counts in pending.items():
                    if key in self._pending:
                        self._pending[key] += counts
                    else:
                        self._pending[key] = counts

    def close(self) -> None:
        self.flush()
        self._close_connection()

    def _set_gauges(self) -> None:
        oldest = _hour(self.clock()) - (METRICS_WINDOW_HOURS - 1) * HOUR
        for version, hours in self._recent.items():
            for hour in [h for h in hours if h < oldest]:
                del hours[hour]
            ref = self._refs.get(version)
            if ref is None or not hours:
                continue
            for name, value in ref.psi(sum(hours.values())).items():
                if value is not None:
                    MODEL_PSI.labels(version, name).set(value)

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.dsn, autocommit=True)
            with ddl_lock(self.dsn):
                self._conn.execute(DDL)
        return self._conn

    def _close_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


async def drift_report(
    db: asyncpg.Pool | asyncpg.Connection | str,
    model_meta: dict[str, Any],
    org_id: str,
    window_hours: int = 24,
    *,
    now: datetime | None = None,
) -> dict[str, Any]:
    """PSI of ``org_id``'s last ``window_hours`` hour buckets (the current one included).

    Raises NoReferenceError for a model without a training reference.
    """
    ref = Reference.of(model_meta)
    to = now or datetime.now(UTC)
    start = datetime.fromtimestamp(_hour(to.timestamp()) - (window_hours - 1) * HOUR, UTC)
    version = str(model_meta["version"])
    try:
        if isinstance(db, str):
            conn = await asyncpg.connect(db)
            try:
                rows = await conn.fetch(WINDOW_COUNTS, version, org_id, start)
            finally:
                await conn.close()
        else:
            rows = await db.fetch(WINDOW_COUNTS, version, org_id, start)
    except asyncpg.UndefinedTableError:
        rows = []  # no worker has recorded anything yet
    flat = np.zeros(ref.size, dtype=np.int64)
    for i, name in enumerate(ref.names):
        width = len(ref.edges[i]) + 1
        for feature, b, c in rows:
            if feature == name and 0 <= b < width:
                flat[ref.offsets[i] + b] += c
    counts = ref.split(flat)
    values = ref.psi(flat)

    def rounded(v: float | None) -> float | None:
        return None if v is None else round(v, 4)

    score_edges = [float(e) for e in ref.edges[-1]]
    bounds = [0.0, *score_edges, 100.0]
    total = sum(counts[SCORE])
    bins = [
        {
            "from": bounds[b],
            "to": bounds[b + 1],
            "expected": round(expected, 6),
            "actual": round(c / total, 6) if total else None,
            "count": c,
        }
        for b, (expected, c) in enumerate(zip(ref.expected[-1], counts[SCORE], strict=True))
    ]
    features = [
        {"feature": name, "psi": rounded(values[name]), "level": drift.level(values[name])}
        for name in ref.names[:-1]
    ]
    # Most drifted first; with no observations (psi null) in feature order.
    features.sort(key=lambda f: -(f["psi"] or 0.0))
    return {
        "model_version": version,
        "org_id": org_id,
        "window": {"from": start, "to": to, "hours": window_hours},
        "observations": total,
        "score": {
            "psi": rounded(values[SCORE]),
            "level": drift.level(values[SCORE]),
            "bins": bins,
        },
        "features": features,
        "reference_source": ref.source,
    }


def reference(X: np.ndarray, p: np.ndarray, source: str, names: Iterable[str]) -> dict[str, Any]:
    """Per feature and for the score: quantile bin edges and the training proportions.

    Features are binned as float32, the type the model reads; the score as the engine
    reports it (100 x P rounded to 0.1), so live values land in the same bins.
    """
    scores = [round(100.0 * float(v), 1) for v in p]

    def binned(values: list[float]) -> dict[str, list[float]]:
        edges = drift.reference_edges(values)
        props = drift.proportions(drift.bin_counts(values, edges))
        return {"edges": edges, "proportions": [round(v, 6) for v in props]}

    # A missing value (NaN) is binned below every value, in live traffic as here.
    X = np.nan_to_num(np.asarray(X, dtype=np.float32), nan=drift.MISSING_BIN)
    return {
        "source": source,
        "rows": len(X),
        "features": {name: binned([float(v) for v in X[:, j]]) for j, name in enumerate(names)},
        "score": binned(scores),
    }
