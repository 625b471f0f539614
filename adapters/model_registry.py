"""The model registry: which model version scores which org, in PostgreSQL.

Every model in ``models/onnx`` is registered in ``scoring_models`` with its metadata
(metrics, features, provenance) and a *scope*: ``global`` or the org it was trained for.
Per scope one version is ``active`` (it scores and publishes) and at most one is
``shadow`` (it scores beside the active one; its scores go to ``shadow_scores`` and are
never published). ``registered`` versions wait; ``retired`` ones are kept for the record.
An org is scored by its own active model when it has one, else by the global one.

Workers read the assignments every ``model_refresh_s`` between batches, so a promotion
reaches running workers without a restart: one batch is scored by the old version, the
next by the new one, never a batch by both.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import psycopg
import structlog
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from adapters.eventstore import ddl_lock
from adapters.model_artifacts import ArtifactStore
from adapters.modelstore import list_models, load_scorer
from domain.processing import BatchOutcome, ShadowScore
from domain.rules import ScoringRules
from domain.scoring import Scorer, check_model

log = structlog.get_logger(__name__)

GLOBAL = "global"
STATUSES = ("registered", "active", "shadow", "retired")

DDL = """
CREATE TABLE IF NOT EXISTS scoring_models (
    version text PRIMARY KEY,
    scope text NOT NULL,
    status text NOT NULL DEFAULT 'registered'
        CHECK (status IN ('registered', 'active', 'shadow', 'retired')),
    metadata jsonb NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now(),
    changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS scoring_models_one_active
    ON scoring_models (scope) WHERE status = 'active';
CREATE UNIQUE INDEX IF NOT EXISTS scoring_models_one_shadow
    ON scoring_models (scope) WHERE status = 'shadow';
CREATE TABLE IF NOT EXISTS scoring_model_changes (
    id bigserial PRIMARY KEY,
    version text NOT NULL,
    scope text NOT NULL,
    status text NOT NULL,
    previous_status text,
    changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS shadow_scores (
    shadow_version text NOT NULL,
    aggregate_id uuid NOT NULL,
    org_id text NOT NULL,
    lead_id text NOT NULL,
    active_version text NOT NULL,
    active_score double precision NOT NULL,
    shadow_score double precision NOT NULL,
    scored_at timestamptz NOT NULL,
    PRIMARY KEY (shadow_version, aggregate_id)
);
CREATE TABLE IF NOT EXISTS scoring_rules (
    org_id text NOT NULL,
    version text NOT NULL,
    sha256 text NOT NULL,
    document text NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, version)
);
"""


class ModelRegistryError(ValueError):
    """A registry change that cannot be made, with the reason."""


def scope_of(meta: dict[str, Any]) -> str:
    """The org a model was trained for (``leadscore train --org``), else global."""
    org = (meta.get("provenance") or {}).get("org")
    return GLOBAL if org in (None, "", "(all orgs)") else str(org)


@dataclass(frozen=True)
class Assignment:
    active: str | None = None
    shadow: str | None = None


class ModelRegistry:
    def __init__(self, dsn: str, model_dir: Path) -> None:
        self.dsn = dsn
        self.model_dir = Path(model_dir)
        with ddl_lock(dsn), psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(DDL)
        # Each version's files, shared: a worker on any machine loads what is promoted.
        self.artifacts = ArtifactStore(dsn, self.model_dir)

    def _connect(self) -> psycopg.Connection[dict[str, Any]]:
        return psycopg.connect(self.dsn, row_factory=dict_row)

    def sync(self, preferred: str | None = None) -> list[str]:
        """Register the models on disk that the table lacks, and share their files
        (adapters/model_artifacts.py); make sure a global model is active
        (``preferred``, else the newest global one). Returns the new versions."""
        metas = list_models(self.model_dir)
        self.artifacts.publish([str(m["version"]) for m in metas])
        with self._connect() as conn:
            conn.execute("LOCK TABLE scoring_models IN SHARE ROW EXCLUSIVE MODE")
            known = {r["version"] for r in conn.execute("SELECT version FROM scoring_models")}
            new = [m for m in metas if str(m["version"]) not in known]
            for meta in list(new):
                try:
                    with conn.transaction():  # a savepoint: one bad folder spoils nothing
                        conn.execute(
                            "INSERT INTO scoring_models (version, scope, metadata) "
                            "VALUES (%s, %s, %s)",
                            (str(meta["version"]), scope_of(meta), Jsonb(meta)),
                        )
                except (psycopg.DataError, ValueError) as exc:
                    # e.g. NaN in metrics (jsonb has none): reported and skipped, not fatal.
                    log.warning(
                        "model folder not registered", version=meta["version"], error=str(exc)
                    )
                    new.remove(meta)
            active = conn.execute(
                "SELECT 1 FROM scoring_models WHERE scope = %s AND status = 'active'", (GLOBAL,)
            ).fetchone()
            if active is None:
                candidates = [str(m["version"]) for m in metas if scope_of(m) == GLOBAL]
                choice = preferred or (candidates[-1] if candidates else None)
                if choice is None:
                    raise ModelRegistryError(
                        f"no global model in {self.model_dir}; train one with `leadscore train`"
                    )
                self._set(conn, choice, "active")
        return [str(m["version"]) for m in new]

    def list(self) -> list[dict[str, Any]]:
        with self._connect() as conn:
            return conn.execute(
                "SELECT version, scope, status, metadata, registered_at, changed_at "
                "FROM scoring_models ORDER BY registered_at, version"
            ).fetchall()

    def assignments(self) -> dict[str, Assignment]:
        """Per scope, the active and shadow versions."""
        out: dict[str, Assignment] = {}
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT version, scope, status FROM scoring_models "
                "WHERE status IN ('active', 'shadow')"
            ).fetchall()
        for r in rows:
            a = out.get(r["scope"], Assignment())
            out[r["scope"]] = (
                Assignment(r["version"], a.shadow)
                if r["status"] == "active"
                else Assignment(a.active, r["version"])
            )
        return out

    def promote(self, version: str) -> str:
        """Make ``version`` its scope's active model; the one it replaces stays registered."""
        return self._change(version, "active")

    def shadow(self, version: str) -> str:
        """Score ``version`` beside its scope's active model, without publishing."""
        return self._change(version, "shadow")

    def retire(self, version: str) -> str:
        return self._change(version, "retired")

    def _change(self, version: str, status: str) -> str:
        self.sync()  # a model trained a moment ago is on disk, maybe not yet in the table
        with self._connect() as conn:
            conn.execute("LOCK TABLE scoring_models IN SHARE ROW EXCLUSIVE MODE")
            return self._set(conn, version, status)

    def _set(self, conn: psycopg.Connection[dict[str, Any]], version: str, status: str) -> str:
        row = conn.execute(
            "SELECT scope, status FROM scoring_models WHERE version = %s", (version,)
        ).fetchone()
        if row is None:
            known = [r["version"] for r in conn.execute("SELECT version FROM scoring_models")]
            raise ModelRegistryError(f"no model {version!r} in the registry (known: {known})")
        scope, before = row["scope"], row["status"]
        if before == status:
            return scope
        if before == "active":
            raise ModelRegistryError(
                f"{version} is the active {scope} model; promote another version first"
            )
        if status in ("active", "shadow"):
            # The version it replaces steps back to registered: it can be promoted again.
            for old in conn.execute(
                "UPDATE scoring_models SET status = 'registered', changed_at = now() "
                "WHERE scope = %s AND status = %s RETURNING version",
                (scope, status),
            ).fetchall():
                self._log(conn, old["version"], scope, "registered", status)
        conn.execute(
            "UPDATE scoring_models SET status = %s, changed_at = now() WHERE version = %s",
            (status, version),
        )
        self._log(conn, version, scope, status, before)
        return scope

    @staticmethod
    def _log(
        conn: psycopg.Connection[dict[str, Any]],
        version: str,
        scope: str,
        status: str,
        before: str | None,
    ) -> None:
        conn.execute(
            "INSERT INTO scoring_model_changes (version, scope, status, previous_status) "
            "VALUES (%s, %s, %s, %s)",
            (version, scope, status, before),
        )
        log.info("model status changed", version=version, scope=scope, status=status, was=before)

    def record_rules(self, sources: Iterable[tuple[str, ScoringRules, str]]) -> None:
        """Keep every rules version in use (org, rules, file text) for the record. The same
        version with other content is a mistake worth a warning: scores name the version."""
        with self._connect() as conn:
            for org, rules, text in sources:
                digest = hashlib.sha256(text.encode()).hexdigest()
                row = conn.execute(
                    "INSERT INTO scoring_rules (org_id, version, sha256, document) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT (org_id, version) DO UPDATE "
                    "SET org_id = EXCLUDED.org_id RETURNING sha256",
                    (org, rules.version, digest, text),
                ).fetchone()
                if row is not None and row["sha256"] != digest:
                    log.warning(
                        "scoring rules changed without a new version; scores cannot tell them"
                        " apart",
                        org=org,
                        version=rules.version,
                    )


# -- reads for the query API (asyncpg, its read-only role) -------------------------------


async def assignments(db: asyncpg.Pool) -> list[dict[str, str]]:
    """Every registered version's scope and status ([] before any worker made the table)."""
    try:
        rows = await db.fetch("SELECT version, scope, status FROM scoring_models")
    except asyncpg.UndefinedTableError:
        return []
    return [dict(r) for r in rows]


async def registered_scope(db: asyncpg.Pool, version: str) -> str | None:
    """The scope ``version`` is registered for; None if it is not (or no table yet)."""
    try:
        scope = await db.fetchval("SELECT scope FROM scoring_models WHERE version = $1", version)
    except asyncpg.UndefinedTableError:
        return None
    return None if scope is None else str(scope)


class ModelRouter:
    """The domain's model for each org (and its shadow), following the registry.

    ``refresh()`` runs between batches; it reloads the assignments at most every
    ``refresh_s`` seconds and loads a version's ONNX session once.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        refresh_s: float = 2.0,
        loader: Callable[[Path, str], Scorer] = load_scorer,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.refresh_s = refresh_s
        self.loader = loader
        self.clock = clock
        self._loaded: dict[str, Scorer] = {}
        self._active: dict[str, Scorer] = {}
        self._shadow: dict[str, Scorer] = {}
        self._checked_at: float | None = None
        self.refresh(force=True)

    def __call__(self, org_id: str) -> Scorer:
        return self._active.get(org_id) or self._active[GLOBAL]

    def shadow(self, org_id: str) -> Scorer | None:
        # An org on its own model is shadowed by its own candidate, not the global one.
        scope = org_id if org_id in self._active else GLOBAL
        return self._shadow.get(scope)

    @property
    def global_model(self) -> Scorer:
        return self._active[GLOBAL]

    def refresh(self, force: bool = False) -> None:
        now = self.clock()
        if not force and self._checked_at is not None and now - self._checked_at < self.refresh_s:
            return
        assignments = self.registry.assignments()
        if GLOBAL not in assignments or assignments[GLOBAL].active is None:
            raise ModelRegistryError("no active global model; run `leadscore models promote`")
        active = {s: self._load(a.active) for s, a in assignments.items() if a.active}
        shadow = {s: self._load(a.shadow) for s, a in assignments.items() if a.shadow}
        before = {s: m.version for s, m in self._active.items()}
        if before and before != {s: m.version for s, m in active.items()}:
            log.info(
                "active models changed",
                before=before,
                now={s: m.version for s, m in active.items()},
            )
        self._active, self._shadow = active, shadow
        self._checked_at = now

    def _load(self, version: str) -> Scorer:
        scorer = self._loaded.get(version)
        if scorer is None:
            self.registry.artifacts.ensure_local(version)  # fetched if this machine lacks it
            scorer = self.loader(self.registry.model_dir, version)
            check_model(scorer)
            self._loaded[version] = scorer
        return scorer


class ShadowLog:
    """A sink of the processor: shadow scores into ``shadow_scores``, latest per lead."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: psycopg.Connection[Any] | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def __call__(self, outcome: BatchOutcome, scored_at: datetime) -> None:
        if outcome.shadows:
            self.record(outcome.shadows, scored_at)

    def record(self, shadows: Sequence[ShadowScore], scored_at: datetime) -> None:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.dsn, autocommit=True)
        with self._conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO shadow_scores (shadow_version, aggregate_id, org_id, lead_id, "
                "active_version, active_score, shadow_score, scored_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (shadow_version, aggregate_id) DO UPDATE SET "
                "active_version = EXCLUDED.active_version, active_score = "
                "EXCLUDED.active_score, shadow_score = EXCLUDED.shadow_score, "
                "scored_at = EXCLUDED.scored_at",
                [
                    (
                        s.shadow_version,
                        s.aggregate_id,
                        s.org_id,
                        s.lead_id,
                        s.active_version,
                        s.active_score,
                        s.shadow_score,
                        scored_at,
                    )
                    for s in shadows
                ],
            )


def shadow_report(dsn: str, version: str) -> dict[str, Any]:
    """How a shadow model's latest scores compare with the active model's on the same leads:
    agreement (mean gap, share within 5 points, rank correlation, top-decile overlap) and,
    where the read model knows outcomes, each model's AUC and lift at the top decile."""
    import numpy as np

    from adapters.evaluation import auc, lift_at

    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        try:
            rows = conn.execute(
                "SELECT s.active_version, s.active_score, s.shadow_score, l.status "
                "FROM shadow_scores s LEFT JOIN leads l ON l.aggregate_id = s.aggregate_id "
                "WHERE s.shadow_version = %s",
                (version,),
            ).fetchall()
        except psycopg.errors.UndefinedTable:  # no PostgreSQL read model: no outcomes
            conn.rollback()
            rows = conn.execute(
                "SELECT active_version, active_score, shadow_score, NULL AS status "
                "FROM shadow_scores WHERE shadow_version = %s",
                (version,),
            ).fetchall()
    report: dict[str, Any] = {"shadow": version, "leads": len(rows)}
    if not rows:
        return report
    a = np.array([r["active_score"] for r in rows], dtype=float)
    b = np.array([r["shadow_score"] for r in rows], dtype=float)
    top = max(1, len(rows) // 10)
    top_a, top_b = set(np.argsort(-a)[:top]), set(np.argsort(-b)[:top])
    report |= {
        "active": sorted({r["active_version"] for r in rows}),
        "mean_abs_diff": float(np.mean(np.abs(a - b))),
        "within_5_points": float(np.mean(np.abs(a - b) <= 5.0)),
        "rank_correlation": rank_correlation(a, b),
        "top_decile_overlap": len(top_a & top_b) / top,
    }
    outcome = [r["status"] for r in rows]
    decided = np.array([o in ("converted", "disqualified") for o in outcome])
    y = np.array([o == "converted" for o in outcome], dtype=float)
    report["with_outcome"] = int(decided.sum())
    if y[decided].min(initial=1) < y[decided].max(initial=0):  # both outcomes present
        report["active_auc"] = auc(y[decided], a[decided] / 100)
        report["shadow_auc"] = auc(y[decided], b[decided] / 100)
        report["active_lift"] = lift_at(y[decided], a[decided] / 100)
        report["shadow_lift"] = lift_at(y[decided], b[decided] / 100)
    return report


def rank_correlation(a: Any, b: Any) -> float | None:
    """Spearman's rank correlation of two models' scores for the same leads (scipy's: tied
    scores share their average rank); None where it is undefined, for fewer than two leads
    or when either model gives every lead the same score."""
    import numpy as np
    from scipy.stats import spearmanr

    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def forget_shadow_scores(dsn: str, aggregate_id: UUID) -> int:
    """Delete a forgotten lead's shadow scores (every shadow version); how many there were."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('shadow_scores')").fetchone() == (None,):
            return 0
        return conn.execute(
            "DELETE FROM shadow_scores WHERE aggregate_id = %s", (aggregate_id,)
        ).rowcount
