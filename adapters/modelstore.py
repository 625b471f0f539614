"""Versioned ONNX models on disk, and the Scorer adapter that runs them.

Layout: ``<model_dir>/<version>/model.onnx`` + ``metadata.json`` (written by
``leadscore.training``). Directories starting with "." are ignored: training
writes into one before moving it into place.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import structlog

from domain.featurespec import DEFAULT_SPEC, FeatureSpec

log = structlog.get_logger(__name__)

MODEL_FILE = "model.onnx"
METADATA_FILE = "metadata.json"


class ModelNotFoundError(LookupError):
    """No model of the requested version (or none at all) in the model directory."""


class OnnxScorer:
    """The domain's Scorer port, backed by an onnxruntime session on one model version."""

    def __init__(self, version_dir: Path) -> None:
        version_dir = Path(version_dir)
        self.path = version_dir
        self.metadata: dict[str, Any] = _read_metadata(version_dir / METADATA_FILE)
        self.version: str = str(self.metadata["version"])
        self.feature_names: tuple[str, ...] = tuple(self.metadata["feature_names"])
        # The feature spec the model was trained with (vocabularies included); models from
        # before feature specs read the builtin features.
        doc = self.metadata.get("feature_spec")
        self.spec: FeatureSpec = FeatureSpec.from_dict(doc) if doc else DEFAULT_SPEC
        if self.spec.names != self.feature_names:
            raise ValueError(
                f"model {self.version}: its feature spec computes {self.spec.names}, "
                f"metadata names {self.feature_names}"
            )
        opts = ort.SessionOptions()
        # The worker shares a 2-core box with Kafka and the databases: one thread per run,
        # parallelism comes from running more workers.
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(
            str(version_dir / MODEL_FILE), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        inputs = self._session.get_inputs()
        self._input = str(self.metadata.get("input_name") or inputs[0].name)
        self._output = str(self.metadata.get("output_name") or "probabilities")
        width = inputs[0].shape[1] if len(inputs[0].shape) == 2 else None
        if isinstance(width, int) and width != len(self.feature_names):
            raise ValueError(
                f"model {self.version}: ONNX input has {width} features, "
                f"metadata names {len(self.feature_names)}"
            )

    def predict(self, rows: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
        """P(converted) per row (list of lists or 2-D array), one session run for the batch."""
        X = np.asarray(rows, dtype=np.float32)
        if X.size == 0:
            return np.empty(0, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != len(self.feature_names):
            raise ValueError(
                f"expected rows of {len(self.feature_names)} features, got shape {X.shape}"
            )
        out = self._session.run([self._output], {self._input: np.ascontiguousarray(X)})[0]
        # Column 1 is the positive class; the converter emits [P(0), P(1)].
        return np.ascontiguousarray(out[:, 1])

    def __repr__(self) -> str:
        return f"OnnxScorer(version={self.version!r}, path={str(self.path)!r})"


def _read_metadata(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    for key in ("version", "feature_names"):
        if key not in meta:
            raise ValueError(f"{path} has no {key!r}")
    return meta


def _is_model_dir(path: Path) -> bool:
    return (
        path.is_dir()
        and not path.name.startswith(".")
        and (path / MODEL_FILE).is_file()
        and (path / METADATA_FILE).is_file()
    )


def _trained_at(meta: dict[str, Any]) -> float:
    """Sort key: trained_at as a timestamp; unparsable ones sort first."""
    try:
        when = datetime.fromisoformat(str(meta.get("trained_at")))
    except ValueError:
        return float("-inf")
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def list_models(model_dir: Path) -> list[dict[str, Any]]:
    """Metadata of every model version in ``model_dir``, oldest first (by trained_at)."""
    root = Path(model_dir)
    if not root.is_dir():
        return []
    metas = []
    for d in sorted(root.iterdir()):
        if not _is_model_dir(d):
            continue
        try:
            metas.append(_read_metadata(d / METADATA_FILE))
        except (OSError, ValueError) as exc:
            # A broken version folder is reported and skipped; it never hides the others.
            log.warning("model folder skipped", folder=d.name, error=str(exc))
    return sorted(metas, key=lambda m: (_trained_at(m), str(m["version"])))


def load_scorer(model_dir: Path, version: str | None = None) -> OnnxScorer:
    """The scorer for ``version``, or for the newest model (by trained_at) when None."""
    root = Path(model_dir)
    if version is None:
        models = list_models(root)
        if not models:
            raise ModelNotFoundError(f"no models in {root}; train one with `leadscore train`")
        version = str(models[-1]["version"])
    target = root / version
    # A version is a directory name, never a path out of the model directory.
    if Path(version).name != version or version.startswith(".") or not _is_model_dir(target):
        available = ", ".join(str(m["version"]) for m in list_models(root)) or "none"
        raise ModelNotFoundError(f"no model version {version!r} in {root} (available: {available})")
    return OnnxScorer(target)
